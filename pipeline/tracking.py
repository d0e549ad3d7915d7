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

import contextlib
import csv
import hashlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.config import Params, as_flat_dict
from pipeline.errors import TrackingError
from pipeline.files import read_json

STORE_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"  # beside the store; already in .gitignore
EXPS_TMP_PARTS = (".dvc", "tmp", "exps")
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
HISTORY_CSV = "reports/history.csv"
METRICS_DIR = "metrics"
# MLflow's log_batch limits (per request).
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def store_root(project_root: str | os.PathLike) -> Path:
    """The real repo root: `<root>` for a DVC experiment copy under `<root>/.dvc/tmp/exps/`."""
    path = Path(project_root).resolve()
    parts = path.parts
    n = len(EXPS_TMP_PARTS)
    for i in range(len(parts) - n + 1):
        if parts[i : i + n] == EXPS_TMP_PARTS:
            return Path(*parts[:i])
    return path


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


def run_tags(project_root: Path, params: Params) -> dict[str, str]:
    commit, dirty = git_state(project_root)
    tags = {
        "git.commit": commit,
        "git.dirty": dirty,
        "dvc.lock_sha256": file_sha256(project_root / "dvc.lock") or "missing",
        "train.arch": params.train.arch,
        "export.precision": params.export.precision,
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit  # shown in the MLflow UI's run header
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


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
    if exp.artifact_location.startswith("mlflow-artifacts:") and not uri_is_http(client.tracking_uri):
        # created through a server that proxies artifacts: only that server can store them
        raise TrackingError(
            f"MLflow experiment {name!r} stores artifacts through a tracking server "
            f"({exp.artifact_location}); set MLFLOW_TRACKING_URI to that server (make ui) "
            "or set another track.experiment"
        )
    return exp.experiment_id


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
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunStatus

    root = Path(project_root).resolve()
    uri = tracking_uri(root)
    check_reachable(uri)
    # Read everything before touching the store: a bad file leaves no half-logged run.
    flat_params = [Param(k, str(v)) for k, v in as_flat_dict(params).items()]
    metrics = collect_metrics(root)
    history = read_history(root)
    tags = run_tags(root, params)
    artifacts = artifact_files(root)

    with store_lock(uri), mlflow_errors(uri):
        client = MlflowClient(tracking_uri=uri)
        exp_id = _experiment_id(client, experiment_name, _artifact_location(uri, root, experiment_name))
        run = client.create_run(exp_id, run_name=run_name or default_run_name(params), tags=tags)
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            all_metrics = [Metric(k, v, now, 0) for k, v in metrics.items()]
            all_metrics += [Metric(k, v, now, step) for k, v, step in history]
            for batch in _chunks(flat_params, _MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=batch)
            for batch in _chunks(all_metrics, _MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=batch)
            for rel in artifacts:
                folder = rel.parent.as_posix()
                client.log_artifact(run_id, str(root / rel), artifact_path=None if folder == "." else folder)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to report
                client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        client.set_terminated(run_id)
    return run_id


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
