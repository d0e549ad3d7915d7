"""Stage `track`: log this pipeline run (params, metrics, history, artifacts) to MLflow.

always_changed in dvc.yaml and without outs: every `dvc repro` / `dvc exp run` logs one
complete run, even when all other stages were skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import DEFAULT_PARAMS, ConfigError, load_params
from pipeline.files import DataError
from pipeline.tracking import TrackingError, log_pipeline_run, mlflow_error_line, tracking_uri


def _quiet_mlflow_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow's defaults (7 retries, 120 s timeout, backoff 2) take minutes to give up on a
    # server that dies mid-run; the health probe already covers a server that is down.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.track", description=__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS)
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument("--run-name", help="default: the DVC experiment name, else arch-precision-time")
    args = parser.parse_args(argv)
    _quiet_mlflow_env()

    from mlflow.exceptions import MlflowException

    root = Path.cwd()
    try:
        params = load_params(args.params)
        experiment = args.experiment or params.track.experiment
        run_id = log_pipeline_run(
            project_root=root, params=params, experiment_name=experiment, run_name=args.run_name
        )
    except (ConfigError, DataError, TrackingError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(mlflow_error_line(err, tracking_uri(root)), file=sys.stderr)
        return 2

    uri = tracking_uri(root)
    print(f"MLflow run {run_id} logged to experiment {experiment!r} at {uri}")
    if uri.startswith("sqlite:///"):
        print("Browse: make ui  -> http://127.0.0.1:5000")
    else:
        print(f"Browse: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
