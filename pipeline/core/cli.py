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
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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

# MAI_VERBOSE=1: every line TensorFlow and LiteRT print, unfiltered (README, "When things go
# wrong"). Any other non-empty value but 0 counts as 1.
VERBOSE_ENV = "MAI_VERBOSE"

# Lines the C++ runtimes write straight to fd 2 that the user can do nothing about.
# TF_CPP_MIN_LOG_LEVEL hides cpu_feature_guard's, but not oneDNN's: TensorFlow 2.21 logs that
# one through absl before it reads the variable (twice, from two libraries), so no setting of
# the environment reaches it. Only the log lines go; oneDNN itself stays as it is.
RUNTIME_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\] "
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
)

# The filter, a separate process: what a crashing stage wrote last (an abort message) still
# gets through after the stage died, which a thread in the stage would lose.
_FILTER = """
import re, sys
noise = re.compile(sys.argv[1].encode())
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.match(line):
        out.write(line)
        out.flush()
"""
FILTER_EXIT_WAIT_S = 10  # a grandchild still holding fd 2 must not hold the stage up

# Every stage's metrics JSON (and index@NAME's NAME.json) records how long the stage took,
# from run_stage's start (TensorFlow is imported inside main, so that counts) to the write:
# `track` adds these up into the pipeline's time (pipeline/tracking/runs.py, pipeline_seconds).
STAGE_SECONDS_KEY = "stage_seconds"
_clock = {"started": time.time()}  # run_stage restarts it; this covers a main() called alone


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_environment() -> None:
    """Hide TF's C++ start-up chatter and MLflow's telemetry; a user's own setting wins.
    MAI_VERBOSE=1 lowers TensorFlow's log threshold to 0 whatever it was."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if verbose():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def _start_filter(noise: re.Pattern) -> tuple[subprocess.Popen, int] | None:
    """Start the filter and point fd 2 at it: (the filter, a copy of the old fd 2), or None
    where fd 2 is unusable (closed) and the stage runs unfiltered."""
    try:
        saved = os.dup(2)
    except OSError:
        return None
    read, write = os.pipe()
    try:
        # Its own session: Ctrl-C stops the stage, not the filter, which drains to the end.
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, noise.pattern],
            stdin=read,
            stdout=saved,
            start_new_session=True,
        )
    except OSError:
        os.close(write)
        os.close(saved)
        return None
    finally:
        os.close(read)
    os.dup2(write, 2)
    os.close(write)
    return proc, saved


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = RUNTIME_NOISE) -> Iterator[None]:
    """Within the block, fd 2 (C++ libraries, child processes and sys.stderr alike) goes
    through a filter process that drops whole lines matching `noise`; the rest passes
    unchanged and in order, all of it before the block ends."""
    sys.stderr.flush()
    started = _start_filter(noise)
    try:
        yield
    finally:
        if started:
            proc, saved = started
            sys.stderr.flush()
            os.dup2(saved, 2)  # closes the pipe's last write end here: the filter reads to EOF
            os.close(saved)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=FILTER_EXIT_WAIT_S)


def stage_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The stage's command line: `python -m stages.NAME [--params FILE]` plus its own options."""
    parser = argparse.ArgumentParser(
        prog=f"python -m stages.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", default=DEFAULT_PARAMS, help=f"params file (default: {DEFAULT_PARAMS})"
    )
    return parser


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's main(argv) and return its exit status.

    A PipelineError becomes `error: <one line>` on stderr and its exit code (2 for bad
    params or data, 1 for a failed conversion, timing or tracking); Ctrl-C exits 130.
    """
    _clock["started"] = time.time()
    quiet_environment()
    try:
        with contextlib.nullcontext() if verbose() else filtered_stderr():
            main(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            "error: interrupted; outputs already written are complete, the rest were not written",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def stage_started() -> float:
    """When this stage started (time.time()): run_stage's call, else this module's import."""
    return _clock["started"]


def timed(summary: dict) -> dict:
    """`summary` plus STAGE_SECONDS_KEY: the seconds this stage has run so far (0.1 s steps)."""
    return {**summary, STAGE_SECONDS_KEY: round(time.time() - stage_started(), 1)}


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
