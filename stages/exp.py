"""Run a params preset as one DVC experiment.

    python -m stages.exp PRESET [DVC_ARGS ...]       (make exp PRESET=... [EXP_ARGS=...])
    python -m stages.exp --print PRESET [DVC_ARGS ...]   print the command, run nothing

A preset is a partial params file (presets/*.yaml; its data.sources replaces the default
ones). Its keys become `dvc exp run -S` arguments on top of params.yaml, followed by
DVC_ARGS (more `dvc exp run` arguments, e.g. `-n NAME`, `--queue`, `-S key=VALUE`: a later
-S wins). The params that result are checked before DVC starts, and DVC gets the arguments
as a list, so a value with spaces or quotes reaches it as it is. Not a DVC stage.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pipeline.core.cli import run_stage, stage_parser
from pipeline.tracking import sweep


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("exp", __doc__)
    parser.add_argument(
        "--print", action="store_true", help="print the dvc exp run command, run nothing"
    )
    parser.add_argument("preset", help="a partial params file, e.g. presets/tum.yaml")
    parser.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more dvc exp run arguments")
    args = parser.parse_args(argv)
    cmd = sweep.preset_command(args.preset, params=args.params, extra=args.dvc_args)
    print(shlex.join(cmd), flush=True)
    if not args.print:
        sweep.run_command(cmd, root=Path.cwd())


if __name__ == "__main__":
    sys.exit(run_stage(main))
