"""What the benches share: the shared data sets, params with overrides, the one chain
train -> TFLite export -> official metrics per validation source, and its results table.

Every run's setup is a dict of params overrides (data.sources, data.val, data.unlabeled,
teacher, train, ...) merged over params.yaml, so a new kind of row needs no new code here.
No TensorFlow at import: the chain imports it when it runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.core.config import Params, load_params, merge
from pipeline.data.dataset import build_split, write_split

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
SHARED = REPO.parent / "shared" / "data"  # read-only, next to the checkout
TUM, HOLOLENS = SHARED / "tum_fr1_xyz", SHARED / "hololens2_office"
REAL = {"tum": str(TUM), "hololens": str(HOLOLENS)}  # the two real scenes by source name
ENCODER_FILES = REPO.parent / "shared" / "encoders"  # ImageNet encoders (see its README)
# A pretrained encoder by a short name: train overrides (encoder, width, weights file)
PRETRAINED = {
    "v2-1.0": (
        "mobilenet_v2",
        1.0,
        "models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    "v2-0.5": ("mobilenet_v2_deeplab", 0.5, "deeplabv3_mnv2_dm05_pascal_quant.tflite"),
    "v1-0.75": ("mobilenet_v1", 0.75, "mobilenet_v1_0.75_192_quant.tflite"),
    "v1-0.5": ("mobilenet_v1", 0.5, "mobilenet_v1_0.5_160_quant.tflite"),
    "v1-0.25": ("mobilenet_v1", 0.25, "mobilenet_v1_0.25_128_quant.tflite"),
    "v3s-1.0": ("mobilenet_v3_small", 1.0, "mobilenet_v3_small_1.0_224_uint8.tflite"),
}

# The ImageNet classifiers among them (TFLite): file -> (train.encoder, width)
CLASSIFIERS = {
    "mobilenet_v1_0.25_128_quant.tflite": ("mobilenet_v1", 0.25),
    "mobilenet_v1_0.5_160_quant.tflite": ("mobilenet_v1", 0.5),
    "mobilenet_v1_0.75_192_quant.tflite": ("mobilenet_v1", 0.75),
    "mobilenet_v2_1.0_224_int8.tflite": ("mobilenet_v2", 1.0),
    "mobilenet_v3_small_1.0_224_uint8.tflite": ("mobilenet_v3_small", 1.0),
}


def encoder_overrides(spec: str) -> dict:
    """'v1-0.5' (ImageNet, PRETRAINED) or 'v1-0.5-scratch' (the same encoder, fresh), with an
    optional '@HxW' working size -> train overrides."""
    name, _, size = spec.partition("@")
    scratch = name.endswith("-scratch")
    key = name.removesuffix("-scratch")
    if key not in PRETRAINED:
        raise SystemExit(
            f"encoder {spec!r}: expected one of {', '.join(PRETRAINED)} [-scratch][@HxW]"
        )
    encoder, width, file = PRETRAINED[key]
    train = {
        "arch": "mobile_unet",
        "encoder": encoder,
        "width_multiplier": width,
        "encoder_weights": "none" if scratch else str(ENCODER_FILES / file),
    }
    if size:
        height, width_px = (int(n) for n in size.split("x"))
        train.update(height=height, width=width_px)
    return train


def parse_set(items: list[str]) -> dict:
    """['train.ema=0.99', ...] -> nested overrides, values read as YAML (numbers, bools)."""
    import yaml

    overrides: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train.ema=0.99")
        node = yaml.safe_load(text)
        for part in reversed(key.split(".")):
            node = {part: node}
        overrides = merge(overrides, node)
    return overrides


def source_entries(sources: dict[str, str | Path | dict]) -> dict[str, dict]:
    """{name: folder, or a whole data.sources entry such as {"path", "weight"}} -> entries."""
    return {
        name: dict(src) if isinstance(src, dict) else {"path": str(src)}
        for name, src in sources.items()
    }


def bench_params(*overrides: dict | None, presets=()) -> Params:
    """params.yaml, then the preset files, then each override dict in order (later ones win)."""
    merged: dict = {}
    for override in overrides:
        merged = merge(merged, override or {})
    return load_params(PARAMS, presets=presets, overrides=merged)


def split_rows(params: Params) -> list[dict]:
    """The split rows of params.data (sources, val, val_fraction), as the prepare stage makes."""
    return build_split(
        {name: src.path for name, src in params.data.sources.items()},
        val=params.data.val,
        val_fraction=params.data.val_fraction,
    )


def silent(*_args) -> None:
    """A training log that prints nothing (the benches print one line per run instead)."""


def train_and_score(
    label: str,
    folder: Path,
    params: Params,
    *,
    split_csv: Path | None = None,
    teacher_csv: Path | None = None,
    tflite: Path | None = None,
    step_budget_s: float | None = None,
    log=silent,
    announce: bool = True,
) -> dict:
    """Train `params` in this process, export it to TFLite by the export stage's code
    (params.export: fp32 unless overridden), score it with the official metrics by the
    evaluate stage's code on the split's val rows, per source.

    folder: the run's files (created); split_csv: the split to use, else params.data's is
    written there; teacher_csv: the teacher maps a run with params.teacher.model trains on;
    tflite: where the model goes (default folder/model.tflite); step_budget_s: the training
    steps' wall-clock budget. Returns the label, seed, minutes of training, the training
    summary, the params, the paths of the model files, the split rows, the whole evaluation
    ("result") and its per-source part ("sources").
    """
    import gc

    import keras

    from pipeline.data.dataset import read_split
    from pipeline.device.export import export_model, write_tflite
    from pipeline.model.networks import load_keras_model
    from pipeline.model.training import train

    folder.mkdir(parents=True, exist_ok=True)
    if split_csv is None:
        split_csv = folder / "split.csv"
        write_split(split_csv, split_rows(params))
    rows = read_split(split_csv)
    keras.backend.clear_session()
    start = time.time()
    summary = train(
        params,
        split_csv=split_csv,
        model_out=folder / "model.keras",
        ckpt_dir=folder / "ckpt",
        history_csv=folder / "history.csv",
        fingerprint=label,
        teacher_csv=teacher_csv,
        step_budget_s=step_budget_s,
        log=log,
    )
    minutes = (time.time() - start) / 60
    core = load_keras_model(folder / "model.keras")
    flatbuffer, report = export_model(core, split_csv, cfg=params.export)
    tflite = tflite or folder / "model.tflite"
    write_tflite(tflite, flatbuffer)
    del core  # the next run's graph should not share memory with this one's
    keras.backend.clear_session()
    gc.collect()
    val = [r for r in rows if r["split"] == "val"]
    scored = score_tflite(label, tflite, val, aspect=params.data.aspect)
    if announce:  # each run's figures as they come: a bench cut short still leaves them
        scores = ", ".join(
            f"{source} si-RMSE {m['si_rmse']:.4f} ratio {m['ratio_to_constant']:.2f}"
            for source, m in scored["sources"].items()
        )
        print(
            f"{label} (seed {params.base.seed}): {summary['train_images']} train images, "
            f"{summary['epochs']} epochs x {summary['steps_per_epoch']} steps of batch "
            f"{summary['batch_size']} in {minutes:.1f} min (epoch shipped "
            f"{summary['best_epoch']}); {scores}",
            flush=True,
        )
    return {
        **scored,
        "seed": params.base.seed,
        "minutes": minutes,
        "summary": summary,
        "params": params,
        "model": folder / "model.keras",
        "tflite": tflite,
        "export": report,
        "rows": rows,
    }


def score_tflite(label: str, tflite: Path, rows: list[dict], *, aspect: str | None = None) -> dict:
    """A TFLite model scored on split rows with the official metrics (the evaluate stage's
    code), all cores; aspect: params.data.aspect unless given."""
    from pipeline.core.host import usable_cpus
    from pipeline.device.predict import TFLiteDepthModel
    from pipeline.results.evaluation import evaluate_model

    model = TFLiteDepthModel(tflite, num_threads=usable_cpus())
    result, _ = evaluate_model(model, rows, aspect=aspect or load_params(PARAMS).data.aspect)
    return {"label": label, "minutes": 0.0, "result": result, "sources": result["sources"]}


def val_rows(sources: dict[str, str], held_out: str) -> list[dict]:
    """Every image of the held-out source, as a val split of `sources` holds them."""
    return [r for r in build_split(sources, val=held_out) if r["split"] == "val"]


def print_table(results: list[dict], *, scene: str = "held-out scene") -> None:
    """One line per (run label, validation source): the number of runs (seeds), mean si-RMSE,
    the constant prediction's si-RMSE, the mean ratio of the two (< 1 beats the constant),
    the ratio's range when there are several runs, and mean minutes of training."""
    rows: dict[tuple[str, str], list] = {}
    for r in results:
        for source, m in r["sources"].items():
            rows.setdefault((r["label"], source), []).append((m, r["minutes"]))
    print(
        f"{'run':<28} {scene:<15} {'images':>6} {'runs':>4} {'si-RMSE':>8} {'constant':>8} "
        f"{'ratio':>6} {'range':>11} {'min':>5}"
    )
    for (label, source), group in rows.items():
        ratios = [m["ratio_to_constant"] for m, _ in group]
        spread = f"{min(ratios):.2f}..{max(ratios):.2f}" if len(ratios) > 1 else ""
        m = group[0][0]
        si_rmse = sum(g["si_rmse"] for g, _ in group) / len(group)
        minutes = sum(t for _, t in group) / len(group)
        print(
            f"{label:<28} {source:<15} {m['n_images']:>6} {len(group):>4} {si_rmse:>8.4f} "
            f"{m['baseline_si_rmse']:>8.4f} {sum(ratios) / len(ratios):>6.2f} {spread:>11} "
            f"{minutes:>5.1f}"
        )


# ----------------------------------------------------------------------------- a teacher's maps
TEACHER_PRESET = REPO / "presets" / "teacher.yaml"
ROOMS = SHARED / "places365_rooms_unlabeled"  # 600 homes' rooms, RGB only


def setup_teacher(teacher: Path, overrides: dict, work: Path) -> tuple[dict, object]:
    """A published teacher file for the bench's runs: its settings and train.loss (the
    distillation weights) from presets/teacher.yaml, then `overrides` (--set, which win).
    teacher.model must be a path under models/teacher/ of the project root, so the file is
    linked into `work` and the process works from there. Returns the teacher runs' overrides
    and a CachedTeacher."""
    import os

    import yaml

    from pipeline.core.config import TEACHER_DIR
    from pipeline.teacher.model import TeacherModel

    preset = yaml.safe_load(TEACHER_PRESET.read_text())
    with_teacher = merge(
        {
            "teacher": {**preset["teacher"], "model": f"{TEACHER_DIR}/{teacher.name}"},
            "train": {"loss": preset["train"]["loss"]},
        },
        overrides,
    )
    (work / TEACHER_DIR).mkdir(parents=True, exist_ok=True)
    (work / TEACHER_DIR / teacher.name).symlink_to(teacher.resolve())
    os.chdir(work)
    return with_teacher, CachedTeacher(TeacherModel(bench_params(with_teacher).teacher))


class CachedTeacher:
    """A TeacherModel whose predictions are kept by image content: both directions (and all
    student sizes) label the same images, so the teacher runs once per image."""

    def __init__(self, model):
        self.model, self.cache, self.path, self.size, self.cfg = (
            model,
            {},
            model.path,
            model.size,
            model.cfg,
        )

    def predict(self, rgb):
        import hashlib

        key = hashlib.sha1(rgb.tobytes()).digest() + bytes(str(rgb.shape), "ascii")
        if key not in self.cache:
            self.cache[key] = self.model.predict(rgb)
        return self.cache[key]


def split_scene(
    scene: Path, folder: Path, *, fraction: float = 0.5, first_depth: bool = False
) -> tuple[Path, Path]:
    """Links: the first `fraction` of the scene's sorted names -> first/rgb (and first/depth with
    first_depth; else its depth is never read), the rest -> second/{rgb,depth}. Made once; a
    later call reuses them."""
    first, second = folder / "first", folder / "second"
    if second.is_dir():
        return first, second
    names = sorted(p.name for p in (scene / "rgb").glob("*.png"))
    cut = int(len(names) * fraction)
    parts = [(first, names[:cut], ("rgb", "depth") if first_depth else ("rgb",))]
    parts.append((second, names[cut:], ("rgb", "depth")))
    for part, part_names, subs in parts:
        for sub in subs:
            (part / sub).mkdir(parents=True)
            for name in part_names:
                (part / sub / name).symlink_to(scene / sub / name)
    return first, second


def teacher_scores(model: CachedTeacher, rows: list[dict], label: str, source: str) -> dict:
    """The teacher itself on labelled rows, aligned per image to their ground truth (the
    teacher stage's figure): a result in the shape of train_and_score's, for print_table."""
    from pipeline.teacher.labels import label_image

    images = [label_image(model, model.cfg, r["rgb"], r["depth"]) for r in rows]
    fitted = [i for i in images if i["fit"] is not None]
    si = sum(i["si_rmse"] for i in fitted) / len(fitted)
    constant = sum(i["constant"] for i in fitted) / len(fitted)
    return {
        "label": label,
        "minutes": 0.0,
        "sources": {
            source: {
                "n_images": len(fitted),
                "si_rmse": si,
                "baseline_si_rmse": constant,
                "ratio_to_constant": si / constant,
            }
        },
    }


def prepare_teacher(
    model: CachedTeacher,
    work: Path,
    train_on: str,
    held_out: str,
    sources: dict | None = None,
    rooms: Path = ROOMS,
) -> dict:
    """The teacher's maps for the direction train_on -> held_out, by the teacher stage's code:
    labelled = train_on's images (fitted to their ground truth); unlabeled = the shared rooms
    and the first half of held_out's names (RGB only), which take the median fit of
    train_on's. Returns the maps' alignment.csv, the two halves of held_out, and the
    teacher's own figures on held_out, whole and second half. `sources`: the runs' data.sources
    folders by name (default: the two real scenes); `rooms`: the unlabeled photographs' folder
    (default: all 600)."""
    from pipeline.core.cli import Progress
    from pipeline.data.dataset import list_unlabeled, write_teacher_index
    from pipeline.teacher.labels import run_teacher, summarize

    sources = sources or REAL
    first, second = split_scene(Path(sources[held_out]), work / f"{held_out}_halves")
    labelled = [
        r
        for r in split_rows(
            bench_params({"data": {"sources": source_entries(sources), "val": held_out}})
        )
        if r["split"] == "train"
    ]  # exactly the train rows of the runs
    unlabeled = [
        {**r, "source": name}
        for name, folder in (("rooms", rooms), (f"{held_out}_half", first))
        for r in list_unlabeled(folder)
    ]
    folder = work / f"teacher_{train_on}"
    start = time.time()
    rows = run_teacher(
        model.cfg,
        labelled=labelled,
        unlabeled=unlabeled,
        write_dir=folder,
        final_dir=folder,
        progress=Progress(f"teacher ({train_on}): image", every=100),
        model=model,
    )
    write_teacher_index(folder / "alignment.csv", rows)
    stats = summarize(rows, model.cfg)
    print(
        f"teacher maps for {train_on}: {stats['labelled_images']} labelled + "
        f"{stats['unlabeled_images']} unlabeled in {time.time() - start:.0f} s; dropped "
        f"{stats['dropped']} above {stats['max_residual']}; on {train_on} itself: "
        f"{stats['sources'][train_on]}",
        flush=True,
    )
    return {
        "csv": folder / "alignment.csv",
        "first": first,
        "second": second,
        "scored": [
            teacher_scores(model, val_rows(sources, held_out), f"teacher on {held_out}", held_out),
            teacher_scores(
                model,
                val_rows({f"{held_out}_2nd_half": str(second)}, f"{held_out}_2nd_half"),
                f"teacher on {held_out} 2nd half",
                f"{held_out}_2nd_half",
            ),
        ],
    }


def teacher_fidelity(tflite: Path, model: CachedTeacher, rgb_paths: list[str], aspect: str) -> dict:
    """How near a student comes to its teacher on images neither trained on (e.g. room photos
    held out of data.unlabeled): the mean si-RMSE between the student's depth and the teacher's
    map (both scale-free: a relative teacher's scale does not matter), over a constant's on the
    same map. No ground truth, and no image of a scene a bench reports on."""
    import numpy as np

    from pipeline.core.files import read_rgb
    from pipeline.core.host import usable_cpus
    from pipeline.data.dataset import aspect_crop_box
    from pipeline.device.predict import TFLiteDepthModel

    student = TFLiteDepthModel(tflite, num_threads=usable_cpus())
    errors, constants = [], []
    for path in rgb_paths:
        rgb = read_rgb(path)
        if aspect == "crop":
            top, left, h, w = aspect_crop_box(*rgb.shape[:2], *student.input_size)
            rgb = rgb[top : top + h, left : left + w]
        target = model.predict(rgb)
        pred = student.predict(rgb, out_size=target.shape)
        valid = (target > 0) & (pred > 0)
        log_t = np.log(target[valid])
        errors.append(float(np.std(np.log(pred[valid]) - log_t)))
        constants.append(float(np.std(log_t)))
    return {
        "images": len(errors),
        "si_rmse": float(np.mean(errors)),
        "constant": float(np.mean(constants)),
        "ratio": float(np.mean(errors) / np.mean(constants)),
    }
