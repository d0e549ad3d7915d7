"""Stage track: log this pipeline run (params, metrics, history, artifacts) to MLflow.

always_changed in dvc.yaml and without outs: every `dvc repro` / `dvc exp run` logs one
complete run, even when all other stages were skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli import run_stage, stage_parser
from pipeline.config import load_params
from pipeline.tracking import log_pipeline_run, tracking_uri


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("track", __doc__)
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument("--run-name", help="default: the DVC experiment name, else arch-precision-time")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    root = Path.cwd()
    experiment = args.experiment or params.track.experiment
    run_id = log_pipeline_run(project_root=root, params=params, experiment_name=experiment,
                              run_name=args.run_name)

    uri = tracking_uri(root)
    print(f"MLflow run {run_id} logged to experiment {experiment!r} at {uri}")
    if uri.startswith("sqlite:///"):
        print("Browse: make ui  -> http://127.0.0.1:5000")
    else:
        print(f"Browse: {uri}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
