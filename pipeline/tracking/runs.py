"""MLflow logging: one complete, comparable run per `dvc repro` / `dvc exp run`.

A DVC stage that is skipped logs nothing, so the last stage (`track`, always_changed)
logs everything at once: every param under its section name, the final metrics of every
stage (metrics/*.json), the per-epoch history as metric steps, the artifacts, and tags
tying the run to its code (git commit) and data (dvc.lock hash, DVC experiment name).

Where DVC runs things (read in dvc 3.67.1's dvc/repo/experiments/ and dvc/stage/run.py,
and checked with a probe repo):
- `dvc exp run --temp` runs the stages in `<root>/.dvc/tmp/exps/standalone/tmpXXXX`, queued
  runs (`--queue` + `dvc queue start`) in other temp dirs under `<root>/.dvc/tmp/exps/`
  (utils.EXEC_TMP_DIR = "exps"). The copies are deleted afterwards, so the store and the
  artifacts must live in the real root, never under the cwd.
- Every stage command gets DVC_ROOT (for experiments overridden to the *parent* repo root,
  queue/base.py) and DVC_STAGE; `dvc exp run` (workspace, --temp and queued alike) also
  sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV. Plain `dvc repro` sets neither of the two.
  The path rule below needs no env var, so it also holds when the stage is run by hand.
- In a temp copy, git HEAD is the baseline commit and `-S` overrides show up as a
  modified params.yaml, so `git.dirty` is true for such experiments (the params say why).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.core import paths
from pipeline.core.cli import STAGE_SECONDS_KEY
from pipeline.core.config import DEFAULT_PARAMS, Params, as_flat_dict, load_params
from pipeline.core.errors import PipelineError, TrackingError
from pipeline.core.files import read_json
from pipeline.core.paths import HISTORY_CSV, METRICS_DIR, SPLIT_CSV
from pipeline.model import archs  # noqa: F401  (registers train.arch's choices)
from pipeline.results.describe import describe

STORE_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"  # beside the store; already in .gitignore
HEALTH_TIMEOUT_S = 3.0
# Paths (globs) relative to the project root, logged under the same relative folder.
ARTIFACTS = (
    "models/model.tflite",
    "submission/submission.zip",
    "reports/eval_panels/*.png",
    "reports/history.csv",
    "reports/eval_per_image.csv",
    "metrics/*.json",
    "dvc.lock",
    "params.yaml",
)
TRACK_STAGE = "track"
# Same outputs from the same params: already tracked (see pipeline_key).
PIPELINE_KEY_TAG = "pipeline.sha256"
# What compare groups by: runs validated on other data are never ranked together.
VAL_DIGEST_TAG = "data.val_digest"
VAL_NAME_TAG = "data.val_name"
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
# Where the model was trained (metrics/train.json `host`, pipeline.core.host.facts) as tags
# `host.<key>`: two CPUs' vector paths train different weights, so runs say which one.
HOST_TAG_PREFIX = "host."
# Which weights started the encoder (metrics/train.json `encoder`): `encoder.file`, `.sha256`, ...
ENCODER_TAG_PREFIX = "encoder."
DETERMINISM_TAG = "train.op_determinism"
# The first of several identical runs to be logged takes the name
# `<experiment>/tracked/<pipeline key>` as a deleted MLflow experiment: the store's unique
# name constraint decides, on sqlite and on a server's database alike (claim_pipeline_key).
CLAIM_INFIX = "/tracked/"
# A claimant's run still RUNNING after this long died while logging (killed, machine lost):
# its claim no longer stops another run with the same outputs.
CLAIM_STALE_S = 15 * 60
DATASET_CONTEXT_TAG = "mlflow.data.context"
# A run lasts as long as its result took to make (pipeline_seconds): its start is set back
# from the moment track logs it, so the moment logging began is a tag of its own (ms since
# the epoch), what the claim's staleness is judged by.
LOGGING_SINCE_TAG = "track.logging_since"
TOTAL_SECONDS_METRIC = "pipeline.seconds"
# The runs table the link opens: MLflow 3 opens on its GenAI overview unless the link
# asks for the training workflow, and shows no metric column unless a view names them.
# A view is an experiment tag `mlflow.sharedViewState.<key>`, picked by the link.
VIEW_KEY = "pipeline"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
RUNS_VIEW = {
    "orderByKey": "metrics.`evaluate.score`",
    "orderByAsc": False,
    "selectedColumns": [
        "attributes.`Dataset`",
        "params.`train.arch`",
        "params.`export.precision`",
        "metrics.`evaluate.si_rmse`",
        "metrics.`benchmark.median_ms`",
        "metrics.`evaluate.score`",
        "metrics.`export.size_mb`",
    ],
}
UI_HOST = "127.0.0.1"
UI_PORT = 5000  # the Makefile's UI_PORT
# MLflow's log_batch limits (per request).
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def store_root(project_root: str | os.PathLike) -> Path:
    """The real repo root: `<root>` for a DVC experiment copy under `<root>/.dvc/tmp/exps/`."""
    return paths.project_root(project_root)


def tracking_uri(project_root: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite store in the real repo root.

    A relative `sqlite:///x.db` from the environment is anchored at the real root too:
    relative to the cwd it would land in a DVC temp copy and vanish with it.
    """
    root = store_root(project_root)
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        db = _sqlite_path(env)
        if db is not None and not db.is_absolute():
            return f"sqlite:///{(root / db).as_posix()}"
        return env
    return f"sqlite:///{(root / STORE_NAME).as_posix()}"


def _sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///path` URI (relative or absolute), None for anything else."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    rest = uri[len(prefix) :].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialize writers of one local sqlite store across processes (`dvc queue start -j N`).

    Parallel experiments finish within seconds of each other; two processes that open a
    new mlflow.db at once both run MLflow's schema migrations and one fails ("Online
    migration expected to match one row"), sometimes both. The lock file lives in the
    (git-ignored) artifact folder beside the store.
    Other stores (a tracking server, a SQL server) handle concurrency themselves.
    """
    db = _sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; parallel queue runs there are unguarded
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    lock_path = db.resolve().parent / ARTIFACT_DIR / f".{db.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def uri_is_http(uri: str) -> bool:
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


def check_reachable(uri: str, *, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Fail in seconds on a dead tracking server (MLflow itself retries for minutes)."""
    if not uri_is_http(uri):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # something answers (auth, proxy): let MLflow report the details
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (make ui) "
            "or unset MLFLOW_TRACKING_URI to log to the local mlflow.db"
        ) from None


def _artifact_location(uri: str, project_root: Path, experiment: str) -> str | None:
    """Absolute artifact folder for local stores; None lets a server choose.

    MLflow's default for a sqlite store is `./mlruns` relative to the cwd, i.e. inside a
    DVC temp copy that is deleted after the experiment.
    """
    if uri_is_http(uri) or urllib.parse.urlparse(uri).scheme.startswith(("databricks", "uc")):
        return None
    db = _sqlite_path(uri)
    base = db.parent if db is not None else store_root(project_root)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return (base / ARTIFACT_DIR / slug).resolve().as_uri()


def _metric_key(key: str) -> str:
    # MLflow allows alphanumerics, _ - . space and /; anything else becomes _.
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten_numbers(obj, prefix: str, out: dict[str, float]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            _flatten_numbers(value, f"{prefix}.{key}", out)
    elif _is_number(obj):
        out[_metric_key(prefix)] = float(obj)
    # strings, bools, lists and null are not metrics


def collect_metrics(project_root: str | os.PathLike) -> dict[str, float]:
    """Numeric values of metrics/<stage>.json as `<stage>.<key>` (nested keys dotted)."""
    out: dict[str, float] = {}
    for path in sorted((Path(project_root) / METRICS_DIR).glob("*.json")):
        _flatten_numbers(read_json(path), path.stem, out)
    return out


def stage_seconds(project_root: str | os.PathLike) -> dict[str, float]:
    """{stage: seconds} of the stages that made the outputs in `project_root`.

    Each stage writes its own time into its metrics JSON (STAGE_SECONDS_KEY, from
    pipeline.core.cli.timed), and DVC restores that file with the stage's outputs when it
    skips the stage or restores it from the run-cache: a stage counts with the time it took
    when it ran, wherever and whenever that was. index@NAME's time comes through
    prepare.json (sources.NAME.index_seconds). Stages without a metrics JSON (check, synthesize,
    unlabeled@NAME, package) are left out: a `cache: false` file of their own would keep
    DVC's remote run-cache from restoring them (tests/test_dvc_remote.py). So are metrics
    written before the times were.
    """
    folder = Path(project_root) / METRICS_DIR
    found = {path.stem: read_json(path) for path in sorted(folder.glob("*.json"))}
    times: dict[str, float] = {}
    for stage, metrics in found.items():
        if _is_number(metrics.get(STAGE_SECONDS_KEY)):
            times[stage] = float(metrics[STAGE_SECONDS_KEY])
    train = found.get("train", {})
    if "train" in times and _is_number(train.get("train_seconds")):
        # resumed after an interruption: the file has this attempt's time, train_seconds the
        # time of every epoch, the earlier attempts' included
        times["train"] = max(times["train"], float(train["train_seconds"]))
    sources = found.get("prepare", {}).get("sources") or {}
    for name, source in sources.items():
        if isinstance(source, dict) and _is_number(source.get("index_seconds")):
            times[f"index@{name}"] = float(source["index_seconds"])
    return times


def read_history(project_root: str | os.PathLike) -> list[tuple[str, float, int]]:
    """reports/history.csv (Keras CSVLogger) as (`history.<column>`, value, epoch) triples."""
    path = Path(project_root) / HISTORY_CSV
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for index, row in enumerate(csv.DictReader(f)):
            try:
                step = int(float(row.get("epoch", index)))
            except (TypeError, ValueError):
                step = index
            for column, text in row.items():
                if column in (None, "epoch"):
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue  # empty cells (a metric not computed that epoch)
                rows.append((_metric_key(f"history.{column.strip()}"), value, step))
    return rows


def git_state(project_root: str | os.PathLike) -> tuple[str, str]:
    """(commit, dirty) of the code that ran; ('unknown', 'unknown') outside git."""

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=project_root, capture_output=True, text=True, timeout=30
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown", "unknown"
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"
    dirty = "unknown" if status.returncode != 0 else str(bool(status.stdout.strip())).lower()
    return head.stdout.strip(), dirty


def file_sha256(path: str | os.PathLike) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact_files(project_root: str | os.PathLike) -> list[Path]:
    """Existing artifact files, relative to the project root, in ARTIFACTS order."""
    root = Path(project_root)
    found: list[Path] = []
    for pattern in ARTIFACTS:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root)
            if path.is_file() and rel not in found:
                found.append(rel)
    return found


def default_run_name(params: Params) -> str:
    """The DVC experiment name when there is one, else `<arch>-<precision>-<timestamp>`."""
    exp = os.environ.get("DVC_EXP_NAME", "").strip()
    if exp:
        return exp
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{params.train.arch}-{params.export.precision}-{stamp}"


def pipeline_key(project_root: str | os.PathLike, params: Params) -> str | None:
    """What makes two runs the same: dvc.lock without the track stage, plus the params.

    The track stage's own lock entry is left out: DVC writes it after track has run, so
    it differs between the first `dvc repro` and the next one with nothing changed.
    None without a dvc.lock (a stage run by hand): nothing then says what was tracked.
    """
    lock = Path(project_root) / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (yaml.YAMLError, AttributeError) as err:
        raise TrackingError(f"{lock}: not a readable DVC lock file ({err})") from None
    stages = {name: entry for name, entry in stages.items() if name != TRACK_STAGE}
    flat = {k: v for k, v in as_flat_dict(params).items() if not k.startswith(f"{TRACK_STAGE}.")}
    text = json.dumps({"stages": stages, "params": flat}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def host_tags(project_root: str | os.PathLike) -> dict[str, str]:
    """metrics/train.json's `host` facts as `host.<key>` tags, its hardware line and whether
    op determinism was on; {} without a train.json (a stage run by hand, an old run)."""
    path = Path(project_root) / METRICS_DIR / "train.json"
    if not path.is_file():
        return {}
    train = read_json(path)
    facts = train.get("host") if isinstance(train.get("host"), dict) else {}
    tags = {
        f"{HOST_TAG_PREFIX}{key}": str(value)
        for key, value in facts.items()
        if isinstance(value, (str, int, float))
    }
    if isinstance(train.get("hardware"), str):
        tags[f"{HOST_TAG_PREFIX}hardware"] = train["hardware"]
    if isinstance(train.get("op_determinism"), bool):
        tags[DETERMINISM_TAG] = str(train["op_determinism"]).lower()
    return tags


def encoder_tags(project_root: str | os.PathLike) -> dict[str, str]:
    """metrics/train.json's `encoder` (which weights started it) as `encoder.<key>` tags: the
    file, its sha256, the layers it set; {} without one (a run from scratch has weights none)."""
    path = Path(project_root) / METRICS_DIR / "train.json"
    start = read_json(path).get("encoder") if path.is_file() else None
    if not isinstance(start, dict):
        return {}
    return {
        f"{ENCODER_TAG_PREFIX}{key}": str(value)
        for key, value in start.items()
        if isinstance(value, (str, int, float)) and value != ""
    }


def run_tags(project_root: Path, params: Params) -> dict[str, str]:
    commit, dirty = git_state(project_root)
    tags = {
        "git.commit": commit,
        "git.dirty": dirty,
        "dvc.lock_sha256": file_sha256(project_root / "dvc.lock") or "missing",
        "train.arch": params.train.arch,
        "export.precision": params.export.precision,
        **host_tags(project_root),
        **encoder_tags(project_root),
    }
    key = pipeline_key(project_root, params)
    if key is not None:
        tags[PIPELINE_KEY_TAG] = key
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit  # shown in the MLflow UI's run header
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@dataclass(frozen=True)
class DataSplit:
    """The pairs of one source in one split: one MLflow dataset input."""

    source: str  # the source's name (data.sources) or folder name
    location: str  # its folder, as split.csv names it
    split: str  # train | val
    digest: str  # of the pairs' names and contents: same data, same digest, on any machine
    pairs: int

    @property
    def name(self) -> str:
        return f"{self.source}/{self.split}"


def _pair_fingerprint(root: Path, row: dict[str, str]) -> str:
    """The pair's content digest from split.csv; older split files have none: file sizes.
    A file gone missing counts as size -1 (the data changed after prepare)."""
    if row.get("digest"):
        return row["digest"]
    files = (root / row["rgb"], root / row["depth"])
    return "/".join(str(f.stat().st_size if f.is_file() else -1) for f in files)


def data_splits(project_root: str | os.PathLike) -> list[DataSplit]:
    """data/prepared/split.csv as one DataSplit per (source, split); [] without it.

    Nothing is decoded: cheap for any data set size.
    """
    root = Path(project_root)
    path = root / SPLIT_CSV
    if not path.is_file():
        return []
    groups: dict[tuple[str, str, str], list[str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            location = Path(row["rgb"]).parent.parent.as_posix()  # SOURCE/rgb/NAME
            source = row.get("source") or Path(location).name
            line = f"{row['name']}\t{_pair_fingerprint(root, row)}\n"
            groups.setdefault((source, location, row["split"]), []).append(line)
    return [
        DataSplit(
            source,
            location,
            split,
            hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()[:16],
            len(lines),
        )
        for (source, location, split), lines in sorted(groups.items())
    ]


def _fmt_number(value: float | None, digits: int, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def run_description(params: Params, metrics: dict[str, float], splits: list[DataSplit]) -> str:
    """The few lines a person reads first (the run's description, markdown): the method as
    pipeline/results/describe.py words it, the data and the headline figures."""
    train, method = params.train, describe(params)
    data = (
        "; ".join(
            f"{'trained on' if s.split == 'train' else 'validated on'} {s.name} "
            f"({s.pairs} pair{'s' if s.pairs != 1 else ''})"
            for s in splits
        )
        or "no split (data/prepared/split.csv not found)"
    )
    threads = metrics.get("benchmark.threads")
    where = f", {threads:.0f} threads" if threads is not None else ""
    lines = [
        f"**{train.arch}** at {train.height}x{train.width}, {method.precision} TFLite",
        "",
        f"- {method.network}",
        f"- {method.geometry}",
        f"- data: {data}",
        *([f"- extra data: {', '.join(method.extra_data)}"] if method.extra_data else []),
        f"- si-RMSE {_fmt_number(metrics.get('evaluate.si_rmse'), 4)}, "
        f"latency {_fmt_number(metrics.get('benchmark.median_ms'), 1, ' ms')} (median{where}), "
        f"score {_fmt_number(metrics.get('evaluate.score'), 4)}",
    ]
    return "\n".join(lines) + "\n"


def _dataset_inputs(splits: list[DataSplit]):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [
        DatasetInput(
            Dataset(
                name=s.source,
                digest=s.digest,
                source_type="local",
                source=json.dumps({"uri": s.location}),
                profile=json.dumps({"pairs": s.pairs}),
            ),
            tags=[InputTag(DATASET_CONTEXT_TAG, s.split)],
        )
        for s in splits
    ]


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # created meanwhile by a parallel run
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) "
            "or set another track.experiment"
        )
    if exp.artifact_location.startswith("mlflow-artifacts:") and not uri_is_http(
        client.tracking_uri
    ):
        # created through a server that proxies artifacts: only that server can store them
        raise TrackingError(
            f"MLflow experiment {name!r} stores artifacts through a tracking server "
            f"({exp.artifact_location}); set MLFLOW_TRACKING_URI to that server (make ui) "
            "or set another track.experiment"
        )
    return exp.experiment_id


def claim_pipeline_key(
    client, experiment_name: str, key: str, artifact_location: str | None
) -> bool:
    """True when this is the first run logged with pipeline key `key` in `experiment_name`.

    The claim is an experiment named `<experiment>/tracked/<key>`, deleted at once (hidden
    from the experiment list; a deleted experiment keeps its name taken): creating it
    succeeds in one process only, however many finish at the same moment on however many
    machines, because the database's unique name constraint decides.
    """
    from mlflow.exceptions import MlflowException

    try:
        claim = client.create_experiment(
            f"{experiment_name}{CLAIM_INFIX}{key}", artifact_location=artifact_location
        )
    except MlflowException as err:
        if err.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    client.delete_experiment(claim)
    return True


def _logging_since(run) -> float:
    """When track began to log `run` (ms): its LOGGING_SINCE_TAG, else (older runs) its start."""
    try:
        return float(run.data.tags[LOGGING_SINCE_TAG])
    except (KeyError, ValueError):
        return float(run.info.start_time)


def _live_run_with_key(client, exp_id: str, key: str, other_than: str) -> str | None:
    """The oldest finished, or recently started and running, run of the experiment with this
    pipeline key, but `other_than`; None when the claimant failed or died."""
    runs = client.search_runs(
        [exp_id],
        order_by=["attributes.start_time ASC"],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}'",
    )
    fresh = (time.time() - CLAIM_STALE_S) * 1000
    live = [
        r.info
        for r in runs
        if r.info.run_id != other_than
        and (
            r.info.status == "FINISHED"
            or (r.info.status == "RUNNING" and _logging_since(r) > fresh)
        )
    ]
    return live[0].run_id if live else None


def log_pipeline_run(
    *,
    project_root: str | os.PathLike,
    params: Params,
    experiment_name: str,
    run_name: str | None = None,
) -> str:
    """Log one complete MLflow run of the pipeline outputs found in `project_root`.

    Missing optional files (no model, no history, ...) are skipped; a corrupt metrics JSON
    is a DataError. Returns the run id.
    """
    return _log_run(project_root, params, experiment_name, run_name, unique=False)[0]


@dataclass(frozen=True)
class Tracked:
    """What `track_pipeline` did: the run that holds these outputs, and whether it logged it."""

    experiment_id: str | None
    run_id: str
    logged: bool


def track_pipeline(
    *,
    project_root: str | os.PathLike,
    params: Params,
    experiment_name: str,
    run_name: str | None = None,
) -> Tracked:
    """The track stage: log a run unless one with the same outputs and params is tracked.

    The quick look (find_tracked_run) misses a run that another process is logging right
    now; two identical experiments that finish together both get past it, and the claim
    (claim_pipeline_key) lets only the first of them log. track.force logs a run anyway.
    """
    uri = tracking_uri(project_root)
    key = pipeline_key(project_root, params)
    if key and not params.track.force:
        found = find_tracked_run(uri, experiment_name, key)
        if found:
            return Tracked(found[0], found[1], logged=False)
    run_id, logged = _log_run(
        project_root, params, experiment_name, run_name, unique=bool(key) and not params.track.force
    )
    return Tracked(find_experiment_id(uri, experiment_name), run_id, logged)


def _log_run(
    project_root, params: Params, experiment_name: str, run_name: str | None, *, unique: bool
) -> tuple[str, bool]:
    """(run id, logged): with `unique`, the run another process logged with the same
    pipeline key, and False, when that process claimed the key first."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunStatus

    root = Path(project_root).resolve()
    uri = tracking_uri(root)
    check_reachable(uri)
    began = time.time()  # this track's own time counts from here
    # Read everything before touching the store: a bad file leaves no half-logged run.
    times = stage_seconds(root)
    made_in = sum(times.values())
    flat_params = [Param(k, str(v)) for k, v in as_flat_dict(params).items()]
    metrics = collect_metrics(root)
    history = read_history(root)
    tags = run_tags(root, params)
    artifacts = artifact_files(root)
    splits = data_splits(root)
    tags[NOTE_TAG] = run_description(params, metrics, splits)
    val = [split for split in splits if split.split == "val"]
    if val:
        tags[VAL_NAME_TAG] = " + ".join(split.name for split in val)
        tags[VAL_DIGEST_TAG] = (
            val[0].digest
            if len(val) == 1
            else hashlib.sha256(" ".join(split.digest for split in val).encode()).hexdigest()[:16]
        )

    with store_lock(uri), mlflow_errors(uri):
        client = MlflowClient(tracking_uri=uri)
        location = _artifact_location(uri, root, experiment_name)
        exp_id = _experiment_id(client, experiment_name, location)
        client.set_experiment_tag(exp_id, VIEW_TAG, json.dumps(RUNS_VIEW))
        # The run's Duration is the result's: the stages' times, then this track's own.
        start_ms = int((began - made_in) * 1000)
        tags[LOGGING_SINCE_TAG] = str(int(began * 1000))
        run = client.create_run(
            exp_id,
            start_time=start_ms,
            run_name=run_name or default_run_name(params),
            tags=tags,
        )
        run_id = run.info.run_id
        try:
            # The run exists before the claim: whoever loses the claim finds the winner's run.
            key = tags.get(PIPELINE_KEY_TAG)
            if unique and not claim_pipeline_key(client, experiment_name, key, location):
                first = _live_run_with_key(client, exp_id, key, other_than=run_id)
                if first is not None:
                    client.delete_run(run_id)
                    return first, False
                # the claimant's run failed: this one logs the outputs after all
            if splits:
                client.log_inputs(run_id, datasets=_dataset_inputs(splits))
            now = int(time.time() * 1000)
            all_metrics = [Metric(k, v, now, 0) for k, v in metrics.items()]
            all_metrics += [Metric(k, v, now, step) for k, v, step in history]
            for batch in _chunks(flat_params, _MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=batch)
            for batch in _chunks(all_metrics, _MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=batch)
            for rel in artifacts:
                folder = rel.parent.as_posix()
                client.log_artifact(
                    run_id, str(root / rel), artifact_path=None if folder == "." else folder
                )
            end_ms = int(time.time() * 1000)
            if times:  # without any stage's time, the run's Duration is track's alone
                total = Metric(TOTAL_SECONDS_METRIC, round((end_ms - start_ms) / 1000, 1), now, 0)
                client.log_batch(run_id, metrics=[total])
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to report
                client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        client.set_terminated(run_id, end_time=end_ms)
    return run_id, True


@contextlib.contextmanager
def mlflow_errors(uri: str):
    """Turn any MlflowException in the block (often a multi-line server reply) into a
    one-line TrackingError: the one place where MLflow's errors meet the project's."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        first = (str(err).strip().splitlines() or ["unknown MLflow error"])[0]
        raise TrackingError(f"MLflow at {uri}: {first}") from None


def _read_store(uri: str, sql: str, args: tuple) -> list[tuple] | None:
    """A read-only query on a local sqlite store without importing MLflow (seconds saved
    on every `dvc repro` with nothing to log). [] when the store does not exist yet; None
    for other stores, or tables not as expected (another MLflow schema): ask MLflow then."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    if not db.is_file():
        return []
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        ) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.Error:
        return None


def find_experiment_id(uri: str, experiment: str) -> str | None:
    """The id of the active experiment `experiment`, None when there is none yet."""
    rows = _read_store(
        uri,
        "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
        (experiment,),
    )
    if rows is not None:
        return str(rows[0][0]) if rows else None
    check_reachable(uri)
    from mlflow import MlflowClient

    with mlflow_errors(uri):
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None


def find_tracked_run(uri: str, experiment: str, key: str) -> tuple[str, str] | None:
    """(experiment id, run id) of the newest finished run of `experiment` tagged with this
    pipeline key (see pipeline_key), None when there is none."""
    rows = _read_store(
        uri,
        "SELECT r.experiment_id, r.run_uuid FROM runs r"
        " JOIN experiments e ON e.experiment_id = r.experiment_id"
        " JOIN tags t ON t.run_uuid = r.run_uuid"
        " WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'"
        " AND r.status = 'FINISHED' AND t.key = ? AND t.value = ?"
        " ORDER BY r.end_time DESC LIMIT 1",
        (experiment, PIPELINE_KEY_TAG, key),
    )
    if rows is not None:
        return (str(rows[0][0]), rows[0][1]) if rows else None
    exp_id = find_experiment_id(uri, experiment)
    if exp_id is None:
        return None
    from mlflow import MlflowClient

    with mlflow_errors(uri):
        runs = MlflowClient(tracking_uri=uri).search_runs(
            [exp_id],
            max_results=1,
            order_by=["attributes.end_time DESC"],
            filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        )
    return (exp_id, runs[0].info.run_id) if runs else None


def ui_base_url(uri: str, port: int = UI_PORT) -> str:
    """Where the UI of this store is: the tracking server itself, or `make ui` locally."""
    return uri.rstrip("/") if uri_is_http(uri) else f"http://{UI_HOST}:{port}"


def runs_link(base_url: str, experiment_id: str | None) -> str:
    """The page users come for: the experiment's training runs with the pipeline's columns
    (MLflow 3 opens experiments on its GenAI overview otherwise)."""
    if experiment_id is None:
        return base_url
    return (
        f"{base_url}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def _ui_link(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tracking.runs ui-link",
        description="Print the link `make ui` opens: the project's training runs.",
    )
    parser.add_argument(
        "--params", default=DEFAULT_PARAMS, help=f"params file (default: {DEFAULT_PARAMS})"
    )
    parser.add_argument("--port", type=int, default=UI_PORT, help="the UI server's port")
    args = parser.parse_args(argv)
    experiment = load_params(args.params).track.experiment
    # the store `make ui` serves, whatever MLFLOW_TRACKING_URI says
    exp_id = find_experiment_id(
        f"sqlite:///{(store_root(Path.cwd()) / STORE_NAME).as_posix()}", experiment
    )
    note = "" if exp_id else f"  (no run of experiment {experiment!r} yet: run `make repro` first)"
    print(f"MLflow UI: {runs_link(ui_base_url('', args.port), exp_id)}{note}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["ui-link"]:
        sys.exit("usage: python -m pipeline.tracking.runs ui-link [--params FILE] [--port N]")
    try:
        _ui_link(sys.argv[2:])
    except PipelineError as err:
        sys.exit(f"error: {err}")
