"""Compare tracked runs: table (CSV + markdown, printed) and a si-RMSE vs latency Pareto plot.

    python -m stages.compare [--experiment NAME] [--out reports/compare]

Not a DVC stage (it reads the MLflow store, which DVC does not track); run it after a few
`dvc exp run`s, or via `make compare`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli import run_stage, stage_parser
from pipeline.config import load_params
from pipeline.report import load_runs, runs_table, write_report
from pipeline.tracking import tracking_uri


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("compare", __doc__)
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument("--out", default="reports/compare", help="output folder")
    args = parser.parse_args(argv)
    experiment = args.experiment or load_params(args.params).track.experiment
    runs = load_runs(tracking_uri=tracking_uri(Path.cwd()), experiment=experiment)
    table = runs_table(runs)
    paths = write_report(table, args.out)

    print(paths["markdown"].read_text(), end="")
    front = ", ".join(table.loc[table["pareto"], "run"]) or "none (no run has both si-RMSE and latency)"
    print(f"\n{len(table)} runs of {experiment!r}; Pareto front: {front}")
    print(f"wrote {paths['csv']}, {paths['markdown']}, {paths['plot']}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
