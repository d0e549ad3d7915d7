"""Where the stages read and write: the paths of dvc.yaml's deps and outs, in one place
for the code (relative to the project root, where DVC runs every stage), and the one rule
for the paths that params name (resolve_user_path)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import ConfigError

# the check stage's constant output: the stages that read user paths run after it
CHECKED = "data/prepared/checked.txt"
SOURCES_DIR = "data/prepared/sources"  # index@NAME: NAME.csv (pairs) and NAME.json (the check)
SPLIT_CSV = "data/prepared/split.csv"
UNLABELED_DIR = "data/prepared/sources/unlabeled"  # unlabeled@NAME: NAME.csv (RGB-only images)
TEACHER_MAPS = (
    "data/teacher"  # the teacher stage: SOURCE/depth/NAME.png (uint16 mm) + alignment.csv
)
TEACHER_INDEX = "data/teacher/alignment.csv"
KERAS_MODEL = "models/model.keras"
CHECKPOINTS = "models/checkpoints"
TFLITE_MODEL = "models/model.tflite"
HISTORY_CSV = "reports/history.csv"
PER_IMAGE_CSV = "reports/eval_per_image.csv"
PANELS_DIR = "reports/eval_panels"
SUBMISSION_ZIP = "submission/submission.zip"
METRICS_DIR = "metrics"


def metrics_json(stage: str) -> str:
    """metrics/<stage>.json: each stage's figures (DVC metrics, logged to MLflow by track)."""
    return f"{METRICS_DIR}/{stage}.json"


# DVC runs `dvc exp run --temp` in <project>/.dvc/tmp/exps/standalone/tmpXXXX and queued
# experiments in <project>/.dvc/tmp/exps/tmpXXXX: copies of the project's tracked files
# (dvc/repo/experiments/utils.py EXEC_TMP_DIR), deleted afterwards.
EXPERIMENT_COPY_PARTS = (".dvc", "tmp", "exps")


def project_root(cwd: str | os.PathLike | None = None) -> Path:
    """The project a stage belongs to (absolute): `cwd` (default: the current directory, where
    DVC runs every stage), or `<project>` when that is DVC's experiment copy under
    `<project>/.dvc/tmp/exps/`."""
    path = Path(cwd or os.getcwd()).resolve()
    n = len(EXPERIMENT_COPY_PARTS)
    for i in range(len(path.parts) - n + 1):
        if path.parts[i : i + n] == EXPERIMENT_COPY_PARTS:
            return Path(*path.parts[:i])
    return path


def in_experiment_copy(cwd: str | os.PathLike | None = None) -> bool:
    """Whether `cwd` (default: the current directory) is in DVC's copy of a project."""
    return project_root(cwd) != Path(cwd or os.getcwd()).resolve()


def leaves_project(path: str) -> bool:
    """A relative path that starts outside the folder it is relative to (`../shared/x`)."""
    return (
        bool(path) and not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] == ".."
    )


def resolve_user_path(path: str, cwd: str | os.PathLike | None = None) -> str:
    """Where a path that the params name (a data folder, a model file) points, as a path to
    open from `cwd` (default: the current directory, where DVC runs every stage).

    The rule, for every path-valued param (pipeline.core.config.user_paths lists them): a
    path is relative to the project root, the folder with params.yaml and dvc.yaml.
    - An absolute path, "" and a relative path inside the project are returned as written:
      in DVC's experiment copy of the project (`dvc exp run --temp`, queued experiments) a
      path inside resolves in the copy, which holds the experiment's own version of it.
    - A relative path that leaves the project (`../shared/data/x`) is where the user keeps
      their data beside the project: it is anchored at the project itself, also from inside
      a copy (where `../` would lead into .dvc/tmp/), and returned absolute.
    `make exp` and `make sweep` apply the same rule before they queue an experiment, so that
    DVC, which hashes data folders in the copy, finds them too (pipeline/tracking/sweep.py).
    """
    if not leaves_project(path):
        return path
    return os.path.normpath(project_root(cwd) / path)


def check_dvc_dep(key: str, path: str, cwd: str | os.PathLike | None = None) -> None:
    """A path param that DVC hashes as a stage's dep (a data folder) must be where DVC looks:
    in DVC's copy of the project, a relative path that leaves the project is not, and DVC
    fails on it before any stage runs. A ConfigError naming the key and the absolute path to
    give instead (what make exp and make sweep queue; DVC's own advice, treeverse/dvc#8747)."""
    if in_experiment_copy(cwd) and leaves_project(path):
        looked = os.path.normpath(Path(cwd or os.getcwd()).resolve() / path)
        raise ConfigError(
            f"params: {key}={path!r} leaves the project, and this experiment runs in DVC's copy "
            f"of it, where DVC would look for it at {looked}: give the absolute path "
            f"{resolve_user_path(path, cwd)} instead (make exp and make sweep do that)"
        )
