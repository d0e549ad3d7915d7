"""Write the challenge fact sheet of a tracked run as markdown.

    python -m stages.factsheet [--run RUN_ID] [--experiment NAME] [--out reports/factsheet.md]

Not a DVC stage (it reads the MLflow store): by default the newest finished run of
track.experiment, i.e. the last `dvc repro` / `dvc exp run`; or `make factsheet`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import load_params
from pipeline.core.files import atomic_path
from pipeline.tracking.factsheet import load_run, render
from pipeline.tracking.runs import tracking_uri

OUT = "reports/factsheet.md"


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("factsheet", __doc__)
    parser.add_argument("--run", help="MLflow run id (default: the newest finished run)")
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument("--out", default=OUT, help=f"markdown file (default: {OUT})")
    args = parser.parse_args(argv)
    experiment = args.experiment or load_params(args.params).track.experiment
    run, stages = load_run(
        tracking_uri=tracking_uri(Path.cwd()), experiment=experiment, run_id=args.run
    )
    text = render(run, stages)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(text, end="")
    print(f"wrote {args.out} (MLflow run {run.info.run_id})")


if __name__ == "__main__":
    sys.exit(run_stage(main))
