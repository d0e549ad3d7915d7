"""What every stage shares: one entry shape, quiet libraries, one-line errors, progress.

Every module under stages/ reads the same way:

    def main(argv: list[str] | None = None) -> None:
        args = stage_parser("NAME", __doc__).parse_args(argv)
        params = load_params(args.params)
        ...  # call pipeline/, write outputs atomically; raise a PipelineError on failure

    if __name__ == "__main__":
        sys.exit(run_stage(main))

Tests call `run_stage(stage.main, [...])` in-process and get the exit status back.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from pipeline.core.config import DEFAULT_PARAMS
from pipeline.core.errors import EXIT_INTERRUPTED, PipelineError

# Set before TensorFlow or MLflow is imported. MLflow's own HTTP defaults (7 retries,
# 120 s timeout, backoff 2) take minutes to give up on a server that died mid-run; the
# health probe in pipeline.tracking.runs already covers a server that is down.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def quiet_environment() -> None:
    """Hide TF's C++ start-up chatter and MLflow's telemetry; a user's own setting wins."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def stage_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The stage's command line: `python -m stages.NAME [--params FILE]` plus its own options."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help=f"params file (default: {DEFAULT_PARAMS})")
    return parser


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's main(argv) and return its exit status.

    A PipelineError becomes `error: <one line>` on stderr and its exit code (2 for bad
    params or data, 1 for a failed conversion, timing or tracking); Ctrl-C exits 130.
    """
    quiet_environment()
    try:
        main(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; outputs already written are complete, the rest were not written",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


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
