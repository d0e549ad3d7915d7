"""Stage track: log this pipeline run (params, metrics, history, data, artifacts) to MLflow.

always_changed in dvc.yaml and without outs, so it runs on every `dvc repro` /
`dvc exp run`; it logs a new run only when the pipeline's outputs or params differ from
every run already tracked (same dvc.lock and params: "already tracked", unless
`track.force: true`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import load_params
from pipeline.tracking.runs import runs_link, track_pipeline, tracking_uri, ui_base_url


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("track", __doc__)
    parser.add_argument("--experiment", help="MLflow experiment (default: params track.experiment)")
    parser.add_argument(
        "--run-name", help="default: the DVC experiment name, else arch-precision-time"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    root = Path.cwd()
    experiment = args.experiment or params.track.experiment
    uri = tracking_uri(root)
    done = track_pipeline(
        project_root=root, params=params, experiment_name=experiment, run_name=args.run_name
    )
    if done.logged:
        print(f"MLflow run {done.run_id} logged to experiment {experiment!r} at {uri}")
    else:
        print(
            f"already tracked: MLflow run {done.run_id} of experiment {experiment!r} has these "
            "outputs and params (set track.force: true to log another run)"
        )
    link = runs_link(ui_base_url(uri), done.experiment_id)
    print(f"Browse: make ui  -> {link}" if uri.startswith("sqlite:///") else f"Browse: {link}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
