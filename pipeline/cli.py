"""What every stage shares: quiet TensorFlow, one-line errors, a progress printer."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from pipeline.config import ConfigError
from pipeline.files import DataError

EXIT_BAD_INPUT = 2


def quiet_tensorflow() -> None:
    """Hide TF's C++ start-up chatter; must run before tensorflow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def run_stage(main) -> None:
    """Run a stage's main(); bad input becomes `error: <one line>` and exit code 2."""
    quiet_tensorflow()
    try:
        main()
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("error: interrupted; outputs already written are complete, the rest were not written",
              file=sys.stderr)
        sys.exit(130)


class Progress:
    """`label 12/48 (3.1 s)` lines at most every `every` seconds, and always the last one."""

    def __init__(self, label: str, every: float = 5.0):
        self.label, self.every = label, every
        self.start = self.last = time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if done == total or now - self.last >= self.every or done == 1:
            self.last = now
            print(f"{self.label} {done}/{total} ({now - self.start:.1f} s)", flush=True)


def stage_code_files(stage: str, dvc_yaml: str | os.PathLike = "dvc.yaml") -> list[Path]:
    """The Python files among a DVC stage's deps (folders expanded), sorted.

    Without a dvc.yaml that defines the stage (a stage run in a bare copy of the code),
    every file of the pipeline package and the stage's own module: more than needed,
    never less.
    """
    try:
        stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    except FileNotFoundError:
        stages = {}
    deps = stages[stage].get("deps", []) if stage in stages else ["pipeline", f"stages/{stage}.py"]
    files = set()
    for dep in map(Path, deps):
        if dep.suffix == ".py" and dep.is_file():
            files.add(dep)
        elif dep.is_dir() and "${" not in str(dep):
            files.update(dep.rglob("*.py"))
    return sorted(files)
