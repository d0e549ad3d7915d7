"""The challenge fact sheet of one tracked run, as markdown.

The organizers ask every entrant for a fact sheet that describes the method. Everything
here comes from the MLflow run that `track` logged (params, metrics, tags and the
metrics/*.json artifacts), so the sheet describes what ran, not what params.yaml says now.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shlex
import tempfile
import types
import typing
from pathlib import Path

from pipeline.core import host as host_facts
from pipeline.core.config import SYNTHETIC_SOURCE, VAL_BLOCKS, Params, TrainConfig, build_params
from pipeline.core.errors import ConfigError, ReportError
from pipeline.core.overrides import diff_args
from pipeline.model import archs  # noqa: F401  (registers train.arch's choices)
from pipeline.results.describe import augmentation, describe, encoder_start, losses
from pipeline.results.submission import extra_data_flag
from pipeline.tracking.compare import require_experiment, require_store
from pipeline.tracking.runs import mlflow_errors

# metrics/<stage>.json files the sheet reads from the run's artifacts
STAGE_FILES = ("prepare", "train", "export", "benchmark", "evaluate")
SYNTHETIC_NOTE = (
    "procedural indoor scenes with exact depth, rendered by the pipeline (no external data)"
)


def load_run(*, tracking_uri: str, experiment: str, run_id: str | None = None):
    """(run, {stage: metrics dict}) of `run_id`, or of the newest finished run of `experiment`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small JSON files
    import mlflow
    from mlflow import MlflowClient

    require_store(tracking_uri)
    with mlflow_errors(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        if run_id is None:
            exp = require_experiment(client, experiment, tracking_uri)
            runs = client.search_runs(
                [exp.experiment_id],
                filter_string="attributes.status = 'FINISHED'",
                order_by=["attributes.end_time DESC"],  # the start is set back: runs.py
                max_results=1,
            )
            if not runs:
                raise ReportError(
                    f"experiment {experiment!r} at {tracking_uri} has no finished runs yet"
                )
            run = runs[0]
        else:
            run = client.get_run(run_id)
        stage_metrics = {}
        with tempfile.TemporaryDirectory(prefix="factsheet-") as tmp:
            folder = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id,
                    artifact_path="metrics",
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                )
            )
            for stage in STAGE_FILES:
                path = folder / f"{stage}.json"
                stage_metrics[stage] = json.loads(path.read_text()) if path.is_file() else {}
    return run, stage_metrics


def run_params(logged: dict[str, str]) -> Params:
    """A run's params, typed again from the strings MLflow keeps (str() of each value) by
    the params schema; keys this code no longer has are left out, missing ones take their
    defaults. A ReportError when they no longer make valid params."""
    raw: dict = {}
    for key, text in logged.items():
        typ = _field_type(key)
        if typ is None:
            continue
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = _typed(text, typ)
    try:
        return build_params(raw)
    except ConfigError as err:
        raise ReportError(f"the run's params do not load with this code ({err})") from None


def _field_type(key: str):
    """The schema type of a flat key (data.sources.NAME.path included), None if unknown."""
    typ, parts = Params, key.split(".")
    while parts:
        if not dataclasses.is_dataclass(typ):
            return None
        hints = typing.get_type_hints(typ)
        if parts[0] not in hints:
            return None
        typ = hints[parts.pop(0)]
        if typing.get_origin(typ) is dict:  # a name mapping: the next part is the entry's name
            if not parts:
                return None
            parts.pop(0)
            typ = typing.get_args(typ)[1]
    return None if dataclasses.is_dataclass(typ) else typ


def _typed(text: str, typ):
    # float | str: `auto` or a number
    union = typing.get_origin(typ) in (typing.Union, types.UnionType)
    options = typing.get_args(typ) if union else (typ,)
    for option in options:
        try:
            if option is bool:
                return {"True": True, "False": False}[text]
            if typing.get_origin(option) is tuple:
                return tuple(ast.literal_eval(text))
            return option(text)
        except (KeyError, ValueError, SyntaxError, TypeError):
            continue
    return text  # as logged: load_params names the key and what is wrong


def reproduce_overrides(params: Params) -> list[str]:
    """`dvc exp run -S` arguments that turn params.yaml (= the code defaults) into `params`:
    `key=value` for a changed value, `~data.sources.NAME` for a default source not used and
    `+data.sources.NAME.path=...` for one added. `auto` sizes equal to the run's architecture's
    own are left to `auto`."""
    own = TrainConfig(arch=params.train.arch)  # the defaults, `auto` as the run's arch resolves it
    defaults = Params(train=dataclasses.replace(own, arch=TrainConfig().arch))
    return diff_args(dataclasses.asdict(defaults), dataclasses.asdict(params))


def _fmt(value, spec: str = "", unit: str = "") -> str:
    if value is None or value == "":
        return "n/a"
    return f"{value:{spec}}{unit}" if spec else f"{value}{unit}"


def started_from(train: dict) -> str:
    """The digest of the encoder's weights file (metrics/train.json `encoder`), if any."""
    start = train.get("encoder")
    if isinstance(start, dict) and start.get("sha256"):
        return f" (file sha256 `{start['sha256'][:16]}`, {start.get('layers_loaded')} layers)"
    return ""


def made_on(train: dict) -> str:
    """The fact sheet's line on where the weights were made (metrics/train.json `host`): the
    CPU and its vector path decide the last bits of every weight (docs/reproducibility.md)."""
    host = train.get("host")
    if not isinstance(host, dict):
        return "not recorded (a run from before host facts were kept)"
    cap = host.get("onednn_max_cpu_isa", host_facts.NONE)
    onednn_off = host.get("tf_enable_onednn_opts", host_facts.NONE).lower() in host_facts.ONEDNN_OFF
    determinism = train.get("op_determinism")
    cpu_id = host.get("cpu_id", host_facts.UNKNOWN)  # runs before it was kept have none
    return (
        f"{host.get('cpu', 'n/a')}"
        + ("" if cpu_id == host_facts.UNKNOWN else f", {cpu_id}")
        + f" ({host.get('cpu_extensions', 'n/a')})"
        + (
            ", oneDNN off (Eigen kernels)"
            if onednn_off
            else f", oneDNN capped at {cap}"
            if cap != host_facts.NONE
            else ""
        )
        + f"; TensorFlow {host.get('tensorflow', 'n/a')}, Keras {host.get('keras', 'n/a')}"
        + ("" if determinism is None else f"; op determinism {'on' if determinism else 'off'}")
    )


def render(run, stages: dict[str, dict]) -> str:
    """The fact sheet of one run, as markdown."""
    p, tags = run.data.params, run.data.tags
    prep, train, export, bench, ev = (stages.get(s, {}) for s in STAGE_FILES)
    params = run_params(p)
    method = describe(params)
    t, d = params.train, params.data
    data_line = "; ".join(
        f"{name} `{src.path}` (weight {src.weight})"
        + (f": {SYNTHETIC_NOTE}" if src.path == SYNTHETIC_SOURCE else "")
        for name, src in sorted(d.sources.items())
    )
    validation = (
        f"the last {d.val_fraction:.0%} of every source"
        if d.val == VAL_BLOCKS
        else f"source {d.val} held out whole"
    )
    extra = f"{extra_data_flag(params)}" + (
        f" ({', '.join(method.extra_data)})" if method.extra_data else ""
    )
    par = export.get("parity", {})
    baseline = ev.get("baseline_si_rmse")
    ratio = (
        f" ({ev['si_rmse'] / baseline:.2f}x the constant prediction's {baseline:.4f})"
        if ev.get("si_rmse") and baseline
        else ""
    )
    exp_run = shlex.join(
        ["dvc", "exp", "run", *(a for o in reproduce_overrides(params) for a in ("-S", o))]
    )
    commit = tags.get("git.commit", "unknown")
    dirty = " (with uncommitted changes)" if tags.get("git.dirty") == "true" else ""
    lines = [
        f"# Fact sheet: {run.info.run_name}",
        "",
        "## Model",
        f"- Architecture: {method.network}",
        f"- Encoder start: {encoder_start(params)}" + started_from(train),
        f"- Parameters: {_fmt(train.get('params'), ',')}; "
        f"{_fmt(export.get('macs', 0) / 1e9 if export.get('macs') else None, '.3f')} GMACs at the "
        "device resolution",
        f"- {method.geometry[0].upper()}{method.geometry[1:]}",
        f"- Output: {method.output}",
        "",
        "## Training",
        f"- Losses (masked by valid depth): {losses(params)}",
        f"- Augmentation: {augmentation(params)}",
        f"- AdamW, learning rate {t.learning_rate} (warmup {t.warmup_epochs} epochs, cosine to "
        f"x{t.min_lr_ratio}), weight decay {t.weight_decay}, batch {_fmt(train.get('batch_size'))} "
        f"on {_fmt(train.get('replicas'))} replica(s)"
        + (f"; weights averaged (EMA, momentum {t.ema})" if t.ema > 0 else ""),
        f"- {_fmt(train.get('epochs'))} epochs; shipped weights from epoch "
        f"{_fmt(train.get('best_epoch'))} "
        f"(best val si-RMSE {_fmt(train.get('best_val_si_rmse'), '.4f')} at working resolution)",
        f"- Training time {_fmt(train.get('train_seconds'), '.0f', ' s')} on "
        f"{train.get('hardware', 'n/a')}; "
        f"seed {params.base.seed}, deterministic {params.base.deterministic}",
        f"- Trained on {made_on(train)}",
        "",
        "## Data",
        f"- Sources: {data_line}",
        f"- {_fmt(prep.get('train_images'))} train / {_fmt(prep.get('val_images'))} validation "
        f"images; validation: {validation}; other aspect ratios: {d.aspect} to 4:3",
        f"- Extra data: {extra}",
        "",
        "## Export and runtime",
        f"- TFLite {method.precision}, {_fmt(export.get('size_mb'), '.2f', ' MB')}, "
        f"{_fmt(export.get('n_ops'))} ops, "
        f"builtin ops only; Keras vs TFLite si-RMSE {_fmt(par.get('si_rmse_keras'), '.4f')} -> "
        f"{_fmt(par.get('si_rmse_tflite'), '.4f')}",
        f"- Runtime (measured): median {_fmt(bench.get('median_ms'), '.2f', ' ms')}, p90 "
        f"{_fmt(bench.get('p90_ms'), '.2f', ' ms')}, "
        f"init {_fmt(bench.get('init_ms'), '.1f', ' ms')}, peak RAM "
        f"{_fmt(bench.get('peak_rss_mb'), '.0f', ' MB')}",
        f"- Timed on {bench.get('device', 'n/a')} with {_fmt(bench.get('threads'))} thread(s)"
        + (
            f" (asked for {bench['threads_requested']}, capped at the local cores)"
            if bench.get("threads_capped")
            else ""
        )
        + f", {bench.get('runtime', 'n/a')} {bench.get('runtime_version', '')} "
        f"with {bench.get('delegate', 'n/a')}",
        "",
        "## Results (official metrics, validation split)",
        f"- si-RMSE {_fmt(ev.get('si_rmse'), '.4f')}{ratio}",
        f"- RMSE {_fmt(ev.get('rmse'), '.3f', ' m')}, log10 {_fmt(ev.get('log10'), '.4f')}, rel "
        f"{_fmt(ev.get('rel'), '.4f')}, "
        f"delta1 {_fmt(ev.get('delta1'), '.3f')} over {_fmt(ev.get('n_images'))} images",
        f"- Challenge score {_fmt(ev.get('score'), '.4g')} at the measured runtime",
        "",
        "## Reproduce",
        f"- Code: git commit `{commit}`{dirty}; `dvc.lock` sha256 "
        f"`{tags.get('dvc.lock_sha256', 'missing')}`",
        f"- MLflow run `{run.info.run_id}`"
        + (f", DVC experiment `{tags['dvc.exp_name']}`" if tags.get("dvc.exp_name") else ""),
        "",
        "```bash",
        f"git checkout {commit}",
        exp_run,
        "```",
        "",
    ]
    return "\n".join(lines)
