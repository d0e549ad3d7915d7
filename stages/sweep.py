"""Queue a grid of DVC experiments, one per combination of a grid file, and start the queue.

    python -m stages.sweep [GRID] [--jobs N] [--dry-run] [--wait]     (make sweep)

Every combination is checked against the params first (pipeline/tracking/sweep.py: invalid ones are
skipped with one line, a value invalid everywhere stops it), then queued with
`dvc exp run --queue -n NAME -S key=value ...`, and `dvc queue start -j JOBS` runs them in
the background (the grid's `jobs`, default 1). Follow with `dvc queue status`; each finished
experiment is one MLflow run, and `make compare` draws the front. Not a DVC stage.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.errors import PipelineError
from pipeline.tracking import sweep


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("sweep", __doc__)
    parser.add_argument(
        "grid",
        nargs="?",
        default=sweep.DEFAULT_GRID,
        help=f"grid file (default: {sweep.DEFAULT_GRID})",
    )
    parser.add_argument("--jobs", type=int, help="dvc queue start -j (default: the grid's jobs)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--wait", action="store_true", help="wait until every experiment has finished"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace experiments of the same names"
    )
    args = parser.parse_args(argv)
    plan = sweep.check(sweep.read_grid(args.grid), params=args.params, root=Path.cwd())
    if args.jobs:
        plan = dataclasses.replace(plan, jobs=args.jobs)
    print("\n".join(sweep.describe(plan)))
    if args.dry_run:
        for cmd in [*sweep.queue_commands(plan, force=args.force), sweep.start_command(plan.jobs)]:
            print(shlex.join(cmd))
        return
    names = sweep.queue(plan, root=Path.cwd(), force=args.force)
    print(
        f"started {len(names)} experiments, {plan.jobs} at a time (workers' output: "
        f"{sweep.QUEUE_LOG})"
    )
    if not args.wait:
        print("follow: dvc queue status; dvc queue logs NAME -f; when done: make compare")
        return
    found = sweep.wait(names, root=Path.cwd())
    failed = sorted(n for n, s in found.items() if s == "Failed")
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(names)} experiments failed: {', '.join(failed)} "
            "(dvc queue logs NAME)"
        )
    print(f"all {len(names)} experiments done: make compare")


if __name__ == "__main__":
    sys.exit(run_stage(main))
