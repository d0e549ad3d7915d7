"""Local timing of a .tflite model in a fresh process.

TensorFlow (and its thread pools and ~1 GB of RSS) is usually loaded in the caller by the
time we time a model; running `tflite_runner.py` with `sys.executable` in a new process
keeps both latency and the peak-RSS figure about the model, as on the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pipeline.core import host
from pipeline.core.errors import TimingError

RUNNER = Path(__file__).with_name("tflite_runner.py")


def parse_runner_output(stdout: str, *, where: str) -> dict:
    """The runner prints exactly one JSON object line; take the last line that parses."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise TimingError(f"{where}: runner printed no JSON result (stdout: {stdout.strip()[-200:]!r})")


def runner_error(stderr: str, returncode: int, *, where: str) -> str:
    """A one-line reason from a failed runner, preferring its own `tflite_runner:` line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("tflite_runner:")]
    detail = own[-1] if own else (lines[-1] if lines else f"exit status {returncode}")
    return f"{where}: benchmark failed ({detail[:300]})"


def capped_threads(threads: int) -> int:
    """The threads a local timing uses: more threads than cores only adds contention."""
    return max(1, min(int(threads), host.usable_cpus()))


def time_local(
    model_path,
    *,
    threads: int,
    warmup: int,
    runs: int,
    timeout_s: float = 900,
    references: Mapping[str, str | os.PathLike] | None = None,
    interleave: bool = False,
) -> dict:
    """Time `model_path` here in a fresh `sys.executable` process; the runner's JSON dict.

    threads is capped at the usable core count (`capped_threads`); the result carries
    threads_requested, threads and threads_capped. `references` (name -> .tflite) are timed
    after the model in the same process; their medians come back under `references`. With
    `interleave`, round-robin with the model instead, whose median in those rounds is
    `interleaved` (compare the references with that one: the same load over the same time).
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise TimingError(f"{model_path}: model file not found")
    threads_used = capped_threads(threads)
    cmd = [
        sys.executable,
        str(RUNNER),
        str(model_path),
        "--threads",
        str(threads_used),
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
    ]
    for name, path in (references or {}).items():
        cmd += ["--reference", f"{name}={path}"]
    if interleave:
        cmd.append("--interleave")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise TimingError(f"{model_path}: benchmark timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise TimingError(runner_error(proc.stderr, proc.returncode, where=str(model_path)))
    result = parse_runner_output(proc.stdout, where=str(model_path))
    result["threads_requested"] = int(threads)
    result["threads_capped"] = result["threads"] != int(threads)
    return result
