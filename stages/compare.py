"""Compare tracked runs: table (CSV + markdown, printed) and a si-RMSE vs latency Pareto plot.

    python -m stages.compare [--experiment NAME] [--out reports/compare]

Not a DVC stage (it reads the MLflow store, which DVC does not track); run it after a few
`dvc exp run`s, or via `make compare`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, ConfigError, load_params
from pipeline.report import ReportError, load_runs, runs_table, write_report
from pipeline.tracking import TrackingError, check_reachable, mlflow_error_line, tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument("--params", default=DEFAULT_PARAMS)
    parser.add_argument("--out", default="reports/compare", help="output folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")

    from mlflow.exceptions import MlflowException

    uri = tracking_uri(Path.cwd())
    try:
        experiment = args.experiment or load_params(args.params).track.experiment
        check_reachable(uri)
        runs = load_runs(tracking_uri=uri, experiment=experiment)
        if len(runs) == 0:
            raise ReportError(f"experiment {experiment!r} at {uri} has no runs yet; run `dvc exp run` first")
        table = runs_table(runs)
        paths = write_report(table, args.out)
    except (ConfigError, ReportError, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(mlflow_error_line(err, uri), file=sys.stderr)
        return 2

    print(paths["markdown"].read_text(), end="")
    front = ", ".join(table.loc[table["pareto"], "run"]) or "none (no run has both si-RMSE and latency)"
    print(f"\n{len(table)} runs of {experiment!r}; Pareto front: {front}")
    print(f"wrote {paths['csv']}, {paths['markdown']}, {paths['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
