"""Keras training with per-epoch validation, best-checkpoint selection and resume.

Resume: after every epoch the full training state (weights, optimizer slots and step,
history so far, best score) is written to the checkpoint folder, state.json last and
atomically, so a run killed at any moment restarts from the last complete epoch.
Because the input order and augmentation are functions of (seed, epoch, position) and
the learning rate is a function of the restored optimizer step, the resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import host
from pipeline.core.config import PRECISION_AUTO, VAL_BLOCKS, Params, params_hash
from pipeline.core.errors import DataError, TrainingError
from pipeline.core.files import atomic_path, read_depth_mm, read_rgb, write_json
from pipeline.core.metrics import average_metrics, image_metrics
from pipeline.core.paths import resolve_user_path
from pipeline.data.dataset import read_split, read_teacher_index
from pipeline.data.tfdata import eval_dataset, split_sources, train_dataset
from pipeline.model.cluster import read_tf_config
from pipeline.model.losses import make_loss
from pipeline.model.networks import build_model, load_keras_model
from pipeline.model.pretrained import REFIT_IMAGES, encoder_of, start_encoder

STATE_FILE = "state.json"
MONITOR = "val_si_rmse"
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "val_si_rmse", "val_rmse", "lr", "seconds")


def set_determinism(seed: int, deterministic: bool, log=print) -> None:
    """Seeds everything; with `deterministic`, reruns give bit-identical weights.

    Op determinism alone is not enough on CPU: when independent ops of the backward pass
    run at the same time (inter-op parallelism), the gradients of the decoder's upsampling
    and depthwise layers change in the last bits from run to run, and training drifts
    apart (about 1e-3 in epoch-1 loss at 128x160). Running one op at a time, each still
    using every core, removes that; both together cost about 7% (bench/determinism.py).
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already ran an op in this process (in-process callers)
            if tf.config.threading.get_inter_op_parallelism_threads() != 1:
                log(
                    "warning: TensorFlow was started before training; ops may run concurrently, "
                    "so reruns can differ in the last bits"
                )


class ValidationMetrics(keras.callbacks.Callback):
    """Adds val_loss, val_si_rmse and val_rmse (per image, then averaged) to the epoch logs.

    Done here rather than by fit(validation_data=...): one pass gives all three, and a
    plain call stays correct under tf.distribute when the val set does not split evenly
    across replicas.
    """

    def __init__(self, val_ds, loss_fn):
        super().__init__()
        self.val_ds, self.loss_fn = val_ds, loss_fn
        self.predict = None

    def on_epoch_end(self, epoch, logs=None):
        if (
            self.predict is None
        ):  # a graph, not eager op by op: several times faster on small batches

            def predict(rgb, depth):
                pred = self.model(rgb, training=False)
                return pred, self.loss_fn(depth, pred)

            self.predict = tf.function(predict, reduce_retracing=True)
        per_image, losses, sizes = [], [], []
        for rgb, depth in self.val_ds:
            pred, loss = self.predict(rgb, depth)
            losses.append(float(loss))
            sizes.append(int(rgb.shape[0]))
            per_image += [image_metrics(pred=p, gt=g) for p, g in zip(pred.numpy(), depth.numpy())]
        summary = average_metrics(per_image)  # the official definitions, at working resolution
        logs["val_loss"] = float(np.average(losses, weights=sizes))
        logs[MONITOR] = summary["si_rmse"]
        logs["val_rmse"] = summary["rmse"]


class TrainingState(keras.callbacks.Callback):
    """Per-epoch checkpoint of everything needed to resume, plus best-weight selection.

    select_best=False keeps the last epoch instead: when the validation data is a source
    held out to tell how the model does on an unseen scene, choosing the epoch on it
    would flatter the very figure it reports."""

    def __init__(
        self,
        ckpt_dir: Path,
        history_csv: Path,
        state: dict,
        fingerprint: str,
        select_best: bool = True,
    ):
        super().__init__()
        self.ckpt_dir, self.history_csv = ckpt_dir, history_csv
        self.state, self.fingerprint, self.select_best = state, fingerprint, select_best
        self.epoch_start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        row = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - self.epoch_start, 2),
            "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
        }
        row.update({k: float(logs[k]) for k in HISTORY_COLUMNS if k in logs})
        self.state["history"].append(row)
        # NaN (no valid val pixel at working size) never wins, but the first epoch is always
        # kept so that a best checkpoint exists.
        score = logs[MONITOR] if math.isfinite(logs[MONITOR]) else math.inf
        if "best_epoch" not in self.state or score < self.state["best"] or not self.select_best:
            self.state.update(best=score, best_epoch=epoch + 1)
            self._save_weights("best.weights.h5")
        self._save_weights("last.weights.h5")
        self.state.update(epoch=epoch + 1, fingerprint=self.fingerprint)
        write_history(self.history_csv, self.state["history"])
        write_json(self.ckpt_dir / STATE_FILE, self.state)  # the commit point of the epoch

    def _save_weights(self, name):
        with atomic_path(self.ckpt_dir / name, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Puts the optimizer's moving average of the weights (train.ema) into the model at the
    end of every epoch, before the callbacks after it validate and checkpoint, and the raw
    weights back before the next epoch trains. A checkpoint therefore holds the swapped pair
    (average in the model, raw weights in the optimizer's slots): `resumed` says that the
    weights just loaded are in that state, so the first epoch swaps them back."""

    def __init__(self, resumed: bool):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


class TimeBudget(keras.callbacks.Callback):
    """Stops after the epoch during which the wall-clock budget ran out."""

    def __init__(self, budget_s: float, log):
        super().__init__()
        self.budget_s, self.log, self.start = budget_s, log, time.time()

    def on_epoch_end(self, epoch, logs=None):
        if time.time() - self.start > self.budget_s:
            self.log(
                f"time budget of {self.budget_s:.0f} s reached after epoch {epoch + 1}; stopping"
            )
            self.model.stop_training = True


class StepBudget(keras.callbacks.Callback):
    """Stops, mid-epoch if need be, before a training step that would end past `budget_s`
    seconds of training steps (validation and checkpoints are not counted): the same
    wall-clock budget for models whose steps differ 100-fold (bench/pareto.py). The cut
    epoch still ends as usual: validated, checkpointed."""

    def __init__(self, budget_s: float, log):
        super().__init__()
        self.budget_s, self.log = budget_s, log
        self.spent = self.last = self.started = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last = time.perf_counter() - self.started
        self.spent += self.last
        if (
            self.spent + self.last > self.budget_s
        ):  # the next step, as long as this one, would not fit
            self.log(
                f"budget of {self.budget_s:.0f} s of training steps spent ({self.spent:.0f} s); "
                "stopping"
            )
            self.model.stop_training = True


def training_policy(name: str, log=print) -> str:
    """The Keras dtype policy train.mixed_precision names: `auto` is mixed_float16 when a GPU
    is visible, else float32 with a one-line note (float16 math on a CPU is emulated: slower)."""
    if name != PRECISION_AUTO:
        return name
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    log("note: train.mixed_precision auto: no GPU visible, training in float32")
    return "float32"


@contextlib.contextmanager
def dtype_policy(name: str):
    """Models built inside compute in `name` (variables stay float32); the global policy is
    restored after, so the model saved for export is built, and converts, in float32."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def optimizer_steps(model) -> int:
    """Steps the optimizer took; read as a tensor because under tf.distribute the counter is a
    MirroredVariable, which int() refuses."""
    return int(tf.convert_to_tensor(model.optimizer.iterations.value).numpy())


def make_strategy(name: str):
    """tf.distribute strategy from train.strategy.

    mirrored: every GPU, else every logical CPU device when there are several (how the
    tests run it), else the one default device. multi_worker: MultiWorkerMirroredStrategy
    configured from the TF_CONFIG environment variable, as on a cluster.
    """
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        devices = [d.name for d in gpus] or ([d.name for d in cpus] if len(cpus) > 1 else None)
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise DataError(
                "train.strategy multi_worker needs the TF_CONFIG environment variable (see README)"
            )
        read_tf_config()  # checked: TensorFlow's own parse of a bad one is a traceback or a hang
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """Only the chief of a multi-worker cluster writes checkpoints, history and the model."""
    config = read_tf_config()
    task = config.get("task")
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def per_replica_loss(loss_fn, replicas: int):
    """The loss each of `replicas` replicas minimises: its batch's mean / replicas, so that the
    gradients summed across replicas are those of the global batch's mean. Keras divides a
    per-sample loss itself, but passes a scalar through (losses.py returns batch means), which
    made the gradients and the logged loss `replicas` times too large."""
    if replicas == 1:
        return loss_fn  # one process: the very same graph as ever

    def scaled(gt, pred):
        return loss_fn(gt, pred) / replicas

    return scaled


def writes_outputs(strategy: str) -> bool:
    """Whether this process writes the train stage's outputs: always, but in a multi-worker
    cluster, where only the chief does (a TF_CONFIG left in the environment of a one-process
    run changes nothing)."""
    return strategy != "multi_worker" or is_chief()


def worker_index() -> int:
    """This process's task index in TF_CONFIG (0 without one)."""
    return int((read_tf_config().get("task") or {}).get("index", 0))


def fit_multi_worker(model, strategy, element_spec) -> None:
    """Two changes that let Keras 3.15's fit run under MultiWorkerMirroredStrategy, which it
    does not out of the box (keras-team/keras#20585), both on this model only:

    - fit learns the input shapes by reducing a first batch across replicas, which this
      strategy cannot do for a tuple ("Attempt to convert a value (PerReplica...)"): the
      model, loss and optimizer state are built from the dataset's element spec instead, in
      the strategy's scope, and fit's own build is skipped;
    - fit averages each step's logs across workers along axis 0, which a scalar has not
      ("Invalid reduction dimension 0"): the step returns them as 1-vectors.

    Batch normalization takes its statistics over the global batch (all workers), so every
    worker keeps the same moving statistics and the run trains as one process would on the
    global batch (tests/test_multi_worker.py).
    """
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True  # read at call time; the saved model is built afresh
    with strategy.scope():
        model._symbolic_build(data_batch=element_spec)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step = model.train_step
    model.train_step = lambda data: {k: tf.reshape(v, [1]) for k, v in train_step(data).items()}


def weights_digest(model) -> str:
    """sha256 of every weight's bytes, in order: equal exactly when the weights are."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def write_history(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n"
            )
            writer.writeheader()
            writer.writerows(rows)


def resume_fingerprint(
    params: Params,
    split_csv: str | os.PathLike,
    code_files: list[Path],
    teacher_csv: str | os.PathLike | None = None,
) -> str:
    """What a checkpoint must match to be resumed.

    The base/train params (and the data geometry and weights), the split, the bytes of
    the training code, and the size and modification time of every listed image (cheap,
    and any rewrite of the data changes it). If any of them changed, resuming would mix
    two different runs, or would hand back the finished model of the old code, so
    training starts over instead.
    """
    rows = read_split(split_csv)  # first: a missing split or image is a one-line error
    geometry = [
        params.data.aspect,
        params.export.height,
        params.export.width,
        sorted((name, src.weight) for name, src in params.data.sources.items()),
    ]
    digest = hashlib.sha256(
        (params_hash(params, ("base", "train")) + json.dumps(geometry)).encode()
    )
    init_from = resolve_user_path(params.train.init_from)
    if init_from and Path(init_from).is_file():  # the starting weights' bytes
        digest.update(Path(init_from).read_bytes())
    digest.update(Path(split_csv).read_bytes())
    if params.teacher.model and teacher_csv:  # the teacher's maps and what trains on them
        digest.update(
            Path(teacher_csv).read_bytes()
            + json.dumps(
                [
                    params.teacher.fill_invalid,
                    sorted(
                        (name, src.path, src.weight) for name, src in params.data.unlabeled.items()
                    ),
                ]
            ).encode()
        )
    for path in code_files:
        digest.update(f"\0{path}\0".encode() + Path(path).read_bytes())
    for row in rows:
        for image in (row["rgb"], row["depth"]):
            stat = os.stat(image)
            digest.update(f"\0{image}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _load_state(ckpt_dir: Path, fingerprint: str, log) -> dict:
    state_path = ckpt_dir / STATE_FILE
    if not state_path.exists():
        return {"epoch": 0, "history": []}
    state = json.loads(state_path.read_text())
    if state.get("fingerprint") != fingerprint:
        # Params, data or training code changed since the checkpoint: resuming would mix two runs.
        log(f"checkpoint in {ckpt_dir} is from other params, data or code; starting over")
        return {"epoch": 0, "history": []}
    return state


def _cache_mode(train_cached: bool, val_cached: bool) -> str:
    if train_cached and val_cached:
        return "in RAM"
    return "train in RAM, val decoded per epoch" if train_cached else "off (decode per epoch)"


class EncoderScaledAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate for some variables (a pretrained encoder's) is `scale` x the
    schedule's, the rest's as scheduled (Keras 3 has no per-variable learning rate)."""

    def __init__(self, *, scaled=(), scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self._scale = scale
        self._scaled = {self._var_key(v) for v in scaled}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._scaled:
            learning_rate = learning_rate * self._scale
        return super().update_step(gradient, variable, learning_rate)


def make_optimizer(cfg, schedule, scaled=()):
    """AdamW on the schedule; train.encoder_lr_scale on the `scaled` variables, if any."""
    kwargs = {
        "learning_rate": schedule,
        "weight_decay": cfg.weight_decay,
        "use_ema": cfg.ema > 0,
        "ema_momentum": cfg.ema or 0.99,  # train.ema 0 = off (the momentum is then unused)
    }
    if not scaled:
        return keras.optimizers.AdamW(**kwargs)
    return EncoderScaledAdamW(scaled=scaled, scale=cfg.encoder_lr_scale, **kwargs)


def refit_images(source, cfg, count: int = REFIT_IMAGES) -> list:
    """`count` training images evenly spaced over the train split (every source and the
    unlabeled images alike, as training batches mix them), at working size, unaugmented:
    what a batch-norm refit (train.encoder_batchnorm: refit) takes its statistics from."""
    indices = np.unique(np.linspace(0, source.n - 1, min(count, source.n)).round().astype(int))
    batches = eval_dataset(
        source, batch_size=8, height=cfg.height, width=cfg.width, indices=indices.tolist()
    )
    return [rgb for rgb, _ in batches]


def init_weights(model, path: str | os.PathLike) -> None:
    """Copy the weights of the saved model at `path` into `model`; the two must have the
    same architecture (same weight shapes in the same order), else a one-line DataError."""
    source = load_keras_model(path, missing="train.init_from model not found")
    want = [tuple(w.shape) for w in model.weights]
    have = [tuple(w.shape) for w in source.weights]
    if want != have:
        first = next(
            (i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have))
        )
        detail = (
            f"weight {first} is {have[first] if first < len(have) else 'missing'}, "
            f"expected {want[first] if first < len(want) else 'none'}"
        )
        raise DataError(
            f"{path}: train.init_from is a different architecture than train ({source.name}, "
            f"{len(have)} weights vs {model.name}, {len(want)}; {detail})"
        )
    model.set_weights(source.get_weights())


def describe_hardware() -> str:
    """`2 x GPU (NVIDIA H100 ...)` or `CPU (<model name>), 2 cores`: where training ran."""
    gpus = tf.config.list_physical_devices("GPU")
    return host.hardware(
        [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    )


def determinism_in_force() -> dict:
    """Whether op determinism is on and how many ops may run at once, as TensorFlow has them
    now (an in-process caller may have started TensorFlow before set_determinism)."""
    from tensorflow.python.framework import config as tf_config  # TF 2.21 has no public getter

    return {
        "op_determinism": bool(tf_config.is_op_determinism_enabled()),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def with_teacher(
    train_rows: list[dict], teacher_rows: list[dict], teacher_csv, unlabeled=()
) -> list[dict]:
    """Train rows with their teacher map ("" where it was dropped), then every image of the
    `unlabeled` folders (data.unlabeled names): no ground truth (depth ""), the teacher's map
    alone."""
    maps = {r["rgb"]: r["teacher"] for r in teacher_rows if r["kind"] == "labelled"}
    missing = [r["rgb"] for r in train_rows if r["rgb"] not in maps]
    if missing:
        raise DataError(
            f"{teacher_csv}: no teacher entry for {missing[0]} ({len(missing)} train images); "
            "the split changed after the teacher stage: rerun `dvc repro`"
        )
    rows = [{**r, "teacher": maps[r["rgb"]]} for r in train_rows]
    return rows + [
        {
            "name": r["name"],
            "source": r["source"],
            "rgb": r["rgb"],
            "depth": "",
            "teacher": r["teacher"],
        }
        for r in teacher_rows
        if r["kind"] == "unlabeled" and r["source"] in unlabeled
    ]


def _first_unreadable(rows: list[dict]) -> str | None:
    """The one-line DataError message of the first pair that fails to decode, if any."""
    for row in rows:
        try:
            read_rgb(row["rgb"])
            read_depth_mm(row["depth"])
        except DataError as err:
            return str(err)
    return None


def train(params: Params, **kwargs) -> dict:
    """Train (or resume); a file that TensorFlow cannot decode becomes a DataError naming it,
    a worker of a multi-worker cluster that died a TrainingError naming it."""
    try:
        return _train(params, **kwargs)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
        rows = read_split(kwargs["split_csv"])
        reason = (
            _first_unreadable(rows)
            or f"TensorFlow could not read the data: {err.message.splitlines()[0]}"
        )
        raise DataError(reason) from None
    except (
        tf.errors.UnavailableError,
        tf.errors.AbortedError,
        tf.errors.DeadlineExceededError,
    ) as err:
        if params.train.strategy != "multi_worker":
            raise
        raise TrainingError(cluster_failure(err.message)) from None


def cluster_failure(message: str) -> str:
    """One line from TensorFlow's report of a lost peer: which workers stopped, or the
    report's first telling line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if any("unhealthy" in line for line in lines):
        tasks = sorted(
            set(
                re.findall(
                    r"/job:\w+/replica:\d+/task:(\d+)",
                    "\n".join(line for line in lines if line.startswith("/job:")),
                )
            )
        )
        if tasks:
            return (
                f"multi_worker: worker {', '.join(tasks)} stopped sending heartbeats "
                "(crashed or unreachable); start every worker again"
            )
    telling = next(
        (line for line in lines if "coordination service" in line or "aborted" in line), lines[-1]
    )
    return f"multi_worker: the cluster lost a worker ({telling[:200]}); start every worker again"


def _train(
    params: Params,
    *,
    split_csv: str | os.PathLike,
    model_out: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    history_csv: str | os.PathLike,
    fingerprint: str,
    time_budget_s: float | None = None,
    step_budget_s: float | None = None,
    teacher_csv: str | os.PathLike | None = None,
    extra_callbacks=(),
    log=print,
) -> dict:
    """Train (or resume) and save the best core model to `model_out`. Returns summary metrics.

    time_budget_s stops after the epoch in which it ran out (whole epochs, resumable);
    step_budget_s counts training steps only and stops mid-epoch (StepBudget; for benches,
    a run cut mid-epoch does not resume bit for bit). teacher_csv: the teacher stage's
    alignment.csv, read when teacher.model is set (with_teacher). extra_callbacks: more
    Keras callbacks for fit (benches time the steps with one)."""
    cfg, seed = params.train, params.base.seed
    ckpt_dir, history_csv = Path(ckpt_dir), Path(history_csv)
    chief = writes_outputs(cfg.strategy)
    if chief:  # the other workers of a cluster write nothing into the project
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(seed, params.base.deterministic, log)
    # Before any TensorFlow op: a multi-worker strategy configures the runtime's collective
    # ops, which TensorFlow refuses once it has started ("must be configured at program
    # startup").
    strategy = make_strategy(cfg.strategy)

    train_rows, val_rows = read_split(split_csv, "train"), read_split(split_csv, "val")
    if not train_rows or not val_rows:
        raise DataError(
            f"{split_csv}: needs both train and val rows (train={len(train_rows)}, "
            f"val={len(val_rows)})"
        )
    teacher = bool(params.teacher.model)
    if teacher:
        if teacher_csv is None:
            raise DataError(
                "teacher.model is set but training was given no teacher maps (teacher_csv)"
            )
        train_rows = with_teacher(
            train_rows, read_teacher_index(teacher_csv), teacher_csv, params.data.unlabeled
        )
    weights = {
        n: s.weight
        for sources in (params.data.sources, params.data.unlabeled)
        for n, s in sources.items()
    }
    # Every pair is first brought to the device input's geometry (any source size, even mixed).
    train_src, val_src = split_sources(
        train_rows,
        val_rows,
        cache_max_mb=cfg.cache_max_mb,
        size=(params.export.height, params.export.width),
        aspect=params.data.aspect,
        source_weights=weights,
        teacher=teacher,
    )
    replicas = strategy.num_replicas_in_sync
    # train.batch_size is per replica; the global batch and the learning rate grow with the
    # number of replicas (linear scaling rule), so one set of params scales out unchanged.
    per_replica = (
        min(cfg.batch_size, max(len(train_rows) // replicas, 1))
        if not cfg.steps_per_epoch
        else cfg.batch_size
    )
    batch = per_replica * replicas
    learning_rate = cfg.learning_rate * replicas
    steps = cfg.steps_per_epoch or max(len(train_rows) // batch, 1)

    state = _load_state(ckpt_dir, fingerprint, log)
    if cfg.strategy == "multi_worker" and state["epoch"]:
        # Only the chief keeps checkpoints; a worker resuming at epoch 0 beside a chief at
        # epoch k would run other steps than it and stall the collectives.
        log(
            f"multi_worker: the checkpoint of {state['epoch']} epochs is not resumed (the other "
            "workers have none); starting over"
        )
        state = {"epoch": 0, "history": []}
    start = state["epoch"]
    total_steps = cfg.epochs * steps
    warmup = min(int(cfg.warmup_epochs * steps), total_steps - 1)
    policy = training_policy(cfg.mixed_precision, log)
    with strategy.scope(), dtype_policy(policy):
        model = build_model(cfg)
        if cfg.init_from and not start:
            init_weights(model, resolve_user_path(cfg.init_from))
            log(f"train: starting from the weights of {cfg.init_from}")
        # A resumed run's weights come from its checkpoint: the file is read again (for its
        # digest and the layers it fits), the batch norms' statistics are not refitted.
        encoder = start_encoder(
            model,
            cfg,
            None if start else lambda: refit_images(train_src, cfg),
        )
        if encoder is not None:
            log(
                f"train: encoder from {encoder.weights} ({len(encoder.loaded)} layers), batch "
                f"norms {cfg.encoder_batchnorm}, learning rate x{cfg.encoder_lr_scale:g}"
            )
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate * 0.01 if warmup else learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            alpha=cfg.min_lr_ratio,
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
        optimizer = make_optimizer(
            cfg,
            schedule,
            encoder_of(model).trainable_variables if encoder and cfg.encoder_lr_scale != 1 else (),
        )
        loss_fn = make_loss(cfg.loss, fill_invalid=params.teacher.fill_invalid)
        # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer (Keras's
        # auto_scale_loss); the loss itself is computed in float32 (pipeline.model.losses).
        model.compile(
            optimizer=optimizer,
            loss=per_replica_loss(loss_fn, replicas),
            jit_compile=cfg.jit_compile,
        )
        if start:
            optimizer.build(model.trainable_variables)  # slots must exist before loading them
            model.load_weights(ckpt_dir / "last.weights.h5")
            log(f"resuming from {ckpt_dir} after epoch {start}/{cfg.epochs}")
    if replicas > 1:
        log(
            f"strategy {cfg.strategy}: {replicas} replicas, global batch {batch}, learning rate "
            f"{learning_rate:g}"
        )

    log(
        f"train: {cfg.arch} at {cfg.height}x{cfg.width}, {len(train_rows)} train / {len(val_rows)} "
        f"val images, {steps} steps x batch {batch}, epochs {start + 1}..{cfg.epochs}, cache "
        f"{_cache_mode(train_src.cached, val_src.cached)}"
        + (
            f", teacher maps for {sum(bool(r['teacher']) for r in train_rows)} of them"
            if teacher
            else ""
        )
        + (f", {policy}" if policy != "float32" else "")
        + (", XLA" if cfg.jit_compile else "")
    )
    val_ds = eval_dataset(val_src, batch_size=batch, height=cfg.height, width=cfg.width)
    # Non-chief workers keep their (identical) copy of the state out of the chief's way.
    state_dir = ckpt_dir if chief else Path(tempfile.mkdtemp(prefix="worker_ckpt_"))
    if start < cfg.epochs:
        train_ds = train_dataset(
            train_src,
            seed=seed,
            first_epoch=start,
            epochs=cfg.epochs,
            steps_per_epoch=steps,
            batch_size=batch,
            height=cfg.height,
            width=cfg.width,
            augment_cfg=cfg.augment,
        )
        history_out = history_csv if chief else state_dir / "history.csv"
        callbacks = (
            [AveragedWeights(resumed=start > 0)] if cfg.ema else []
        )  # first: the others see the average
        callbacks += [
            ValidationMetrics(val_ds, loss_fn),
            TrainingState(
                state_dir,
                history_out,
                state,
                fingerprint,
                select_best=params.data.val == VAL_BLOCKS,
            ),
        ]
        if time_budget_s:
            callbacks.append(TimeBudget(time_budget_s, log))
        if step_budget_s:
            callbacks.append(StepBudget(step_budget_s, log))
        callbacks += list(extra_callbacks)
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            fit_multi_worker(model, strategy, train_ds.element_spec)
        model.fit(
            train_ds,
            epochs=cfg.epochs,
            initial_epoch=start,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=2,
        )
    elif not history_csv.exists():
        write_history(history_csv, state["history"])

    model.load_weights(state_dir / "best.weights.h5")
    # A fresh, uncompiled copy: the saved model carries no optimizer or custom loss, and it is
    # float32 (built outside dtype_policy) whatever train.mixed_precision trained it in.
    final = build_model(dataclasses.replace(cfg, encoder_weights="none"))  # no file read again
    final.set_weights(model.get_weights())
    if chief:
        with atomic_path(model_out, suffix=".keras") as tmp:
            final.save(tmp)
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
        log(f"train: worker {worker_index()} done; the chief writes the model, history and metrics")
    last = state["history"][-1]
    return {
        "epochs": len(state["history"]),
        "best_epoch": state["best_epoch"],
        "best_val_si_rmse": state["best"],
        "final_loss": last.get("loss"),
        "final_val_si_rmse": last.get(MONITOR),
        "params": int(final.count_params()),
        "train_images": len(train_rows),
        "val_images": len(val_rows),
        "steps_per_epoch": steps,
        "steps": optimizer_steps(model),
        "batch_size": batch,
        "replicas": replicas,
        # what the fact sheet reports as training time and hardware (a resumed run sums all epochs)
        "train_seconds": round(sum(row.get("seconds", 0.0) for row in state["history"]), 1),
        "hardware": describe_hardware(),
        # the same on every worker of a cluster, and on two machines only if they took the
        # same vector path (docs/reproducibility.md)
        "weights_sha256": weights_digest(final),
        # which weights started the encoder (the fact sheet, readme.txt and MLflow say so)
        "encoder": encoder.summary() if encoder else {"weights": "none"},
        # where and how it was made: two CPUs' vector paths train different weights
        # (docs/reproducibility.md), so every result says which one made it
        "host": host.facts(),
        **determinism_in_force(),
    }
