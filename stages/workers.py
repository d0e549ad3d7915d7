"""Train with several worker processes on this machine, as a cluster of hosts would.

Each worker is `python -m stages.train` with train.strategy multi_worker and a TF_CONFIG
naming every worker's loopback port and its own index (MultiWorkerMirroredStrategy on the
CPU): each trains on its shard of every global batch, and worker 0, the chief, writes
models/model.keras, its checkpoints, reports/history.csv and metrics/train.json. The other
workers' output goes to worker_N.log in a temporary folder, shown when one fails.

A worker that dies stops the others: they end with an error within WORKER_STOP_S (or are
stopped then), and the command names the worker that failed first. Outside DVC (like
`make exp`): it writes the train stage's outputs; to run the pipeline on several hosts,
see docs/scale-out.md, "Two training workers".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import load_params
from pipeline.core.errors import TrainingError

DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT_S = 24 * 3600
# After one worker failed, how long the others get to notice and end by themselves
# (TensorFlow's coordination service aborts them once the dead peer misses its heartbeats).
WORKER_STOP_S = 120
POLL_S = 0.5


def free_ports(count: int) -> list[int]:
    """`count` loopback ports nothing listens on (all held open until chosen, so distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` in a cluster of `addresses` (worker 0 is the chief)."""
    task = {"type": "worker", "index": index}
    return json.dumps({"cluster": {"worker": addresses}, "task": task})


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return ""
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def _log(message: str) -> None:
    print(message, flush=True)  # before the chief's lines, which share this terminal


def run_workers(
    params_file: str | os.PathLike, *, workers: int, timeout_s: float, log=_log
) -> None:
    """Start `workers` training processes here and wait for all; a TrainingError naming the
    first that failed (the others stopped) or the timeout."""
    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    raw.setdefault("train", {})["strategy"] = "multi_worker"
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    with tempfile.TemporaryDirectory(prefix="workers-") as tmp:
        cluster_params = Path(tmp) / "params.yaml"
        cluster_params.write_text(yaml.safe_dump(raw, sort_keys=False))
        load_params(cluster_params)  # bad params: one error here, not one per worker
        logs = [None] + [Path(tmp) / f"worker_{i}.log" for i in range(1, workers)]
        log(
            f"workers: {workers} on {', '.join(addresses)}; worker 0 (the chief) writes the outputs"
        )
        procs = []
        try:
            for index, log_path in enumerate(logs):
                # the chief's output goes to this terminal, the others' to their logs
                out = open(log_path, "wb") if log_path else None
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "stages.train", "--params", str(cluster_params)],
                        env={**os.environ, "TF_CONFIG": tf_config(addresses, index)},
                        stdout=out,
                        stderr=subprocess.STDOUT if out else None,
                        start_new_session=True,
                    )
                )
                if out:
                    out.close()
            log(f"workers: pids {', '.join(str(p.pid) for p in procs)}")
            _wait(procs, logs, timeout_s)
        finally:
            _stop(procs)


def _wait(procs: list[subprocess.Popen], logs: list[Path | None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs):
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed:
            first = failed[0]
            stop_by = time.monotonic() + WORKER_STOP_S
            while any(p.poll() is None for p in procs) and time.monotonic() < stop_by:
                time.sleep(POLL_S)
            detail = _tail(logs[first]) if logs[first] else ""
            if detail:
                print(f"--- worker {first}, last lines:\n{detail}", file=sys.stderr)
            hung = [i for i, p in enumerate(procs) if p.poll() is None]
            raise TrainingError(
                f"worker {first} of {len(procs)} exited with status {procs[first].returncode}"
                + (
                    f"; workers {hung} did not stop within {WORKER_STOP_S} s and were killed"
                    if hung
                    else "; the others stopped"
                )
            )
        if time.monotonic() > deadline:
            raise TrainingError(
                f"workers: not done after {timeout_s:.0f} s (--timeout); all stopped"
            )
        time.sleep(POLL_S)
    if any(p.returncode for p in procs):  # the last one failed after the others finished
        first = next(i for i, p in enumerate(procs) if p.returncode)
        raise TrainingError(
            f"worker {first} of {len(procs)} exited with status {procs[first].returncode}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("workers", __doc__)
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"default {DEFAULT_WORKERS}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds until all are stopped (default {DEFAULT_TIMEOUT_S})",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    run_workers(args.params, workers=args.workers, timeout_s=args.timeout)


if __name__ == "__main__":
    sys.exit(run_stage(main))
