"""Wall time of a DVC experiment queue with one worker vs several, on this machine.

    .venv/bin/python -m bench.queue_parallel [--archs mobile_unet litedepth] [--jobs 1 2]
        [--epochs 1]

For each -j value: a fresh tiny project (the test configuration, tests/conftest.py), one
queued `dvc exp run` per architecture, then `dvc queue start -j N`, timed until every task
has finished. Prints the wall times, the ratio to the first -j value, the CPU time this
machine spent busy meanwhile and the CPU time stolen by other virtual machines on the same
host (Linux /proc/stat; a large steal means the figures are disturbed: rerun).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core import host
from tests.conftest import dvc_bin, make_project, queue_logs, run, start_queue, wait_for_queue


def cpu_seconds() -> dict[str, float]:
    """Machine-wide CPU time so far: busy (user+nice+system+irq) and steal, in seconds."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def time_queue(
    work: Path, archs: list[str], jobs: int, epochs: int
) -> tuple[float, dict[str, str]]:
    root = make_project(work / f"j{jobs}", {"train": {"epochs": epochs}})
    names = {f"{arch.replace('_', '-')}-j{jobs}": arch for arch in archs}
    for name, arch in names.items():
        run([dvc_bin(), "exp", "run", "--queue", "-n", name, "-S", f"train.arch={arch}"], root)
    start = time.monotonic()
    start_queue(root, jobs)
    try:
        statuses, _ = wait_for_queue(root, names, timeout=3600)
    finally:
        run([dvc_bin(), "queue", "stop"], root, check=False)
    wall = time.monotonic() - start
    for name, status in statuses.items():
        if status != "Success":
            print(f"--- {name}: {status} ---\n{queue_logs(root, name)[-4000:]}", file=sys.stderr)
    return wall, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["mobile_unet", "litedepth"])
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    print(
        f"{len(args.archs)} queued tiny experiments ({', '.join(args.archs)}, {args.epochs} "
        f"epoch(s)), {host.usable_cpus()} CPU cores"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="queue_parallel_") as tmp:
        for jobs in args.jobs:
            cpu0 = cpu_seconds()
            wall, statuses = time_queue(Path(tmp), args.archs, jobs, args.epochs)
            cpu1 = cpu_seconds()
            ok = all(s == "Success" for s in statuses.values())
            results.append((jobs, wall))
            cpu = (
                f"; CPU busy {cpu1['busy'] - cpu0['busy']:.0f} s, stolen "
                f"{cpu1['steal'] - cpu0['steal']:.0f} s"
                if cpu0 and cpu1
                else ""
            )
            print(
                f"-j {jobs}: {wall:6.1f} s  ({'all succeeded' if ok else statuses}{cpu})",
                flush=True,
            )
    base_jobs, base_wall = min(results)
    for jobs, wall in results:
        if jobs != base_jobs:
            print(
                f"-j {jobs} vs -j {base_jobs}: {base_wall / wall:.2f}x speed-up "
                f"(wall time ratio {wall / base_wall:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
