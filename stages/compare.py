"""Compare tracked runs per validation data set: table (CSV + markdown, printed), the Pareto
fronts of si-RMSE against the local latency and against the est. Pi 4 latency, plotted with
the challenge score's iso-lines, and the best challenge score.

    python -m stages.compare [--experiment NAME] [--out reports/compare]

si-RMSE from different data is not comparable: runs are grouped by the digest of their
validation split, with one table, two Pareto fronts and a plot per group. Each plot is also
logged to the best-score run of its group (artifacts compare/), to open in the MLflow UI.
Not a DVC stage (it reads the MLflow store, which DVC does not track); run it after a few
`dvc exp run`s, or via `make compare`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import load_params
from pipeline.tracking.compare import (
    SPEEDS,
    count_runs,
    data_groups,
    describe_best,
    load_runs,
    log_plots,
    runs_table,
    write_report,
)
from pipeline.tracking.runs import tracking_uri


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("compare", __doc__)
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument("--out", default="reports/compare", help="output folder")
    args = parser.parse_args(argv)
    experiment = args.experiment or load_params(args.params).track.experiment
    uri = tracking_uri(Path.cwd())
    runs = load_runs(tracking_uri=uri, experiment=experiment)
    table = runs_table(runs)
    paths = write_report(table, args.out)
    logged = log_plots(uri, table, paths["plots"])

    print(paths["markdown"].read_text())
    groups = data_groups(table)
    print(
        f"{count_runs(len(table))} of {experiment!r} in {len(groups)} data group(s), never ranked "
        "across groups:"
    )
    for label, rows in groups:
        fronts = [", ".join(rows.loc[rows[front], "run"]) or "none" for _, _, front, _ in SPEEDS]
        print(
            f"- {label}: {count_runs(len(rows))}; Pareto front: {fronts[0]}; est. Pi 4 front: "
            f"{fronts[1]}; {describe_best(rows)}; plot {paths['plots'][label]}"
            + (f" (also in run {logged[label][:8]}, artifacts compare/)" if label in logged else "")
        )
    print(f"wrote {paths['csv']}, {paths['markdown']}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
