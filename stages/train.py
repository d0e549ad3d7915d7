"""Stage train: fit the core depth model (resumable) and save the best epoch's weights."""

from __future__ import annotations

from pipeline.cli import run_stage, stage_code_files
from pipeline.config import load_params
from pipeline.files import write_json

SPLIT_CSV = "data/prepared/split.csv"
MODEL = "models/model.keras"
CHECKPOINTS = "models/checkpoints"
HISTORY = "reports/history.csv"
METRICS = "metrics/train.json"


def main() -> None:
    params = load_params()
    # TensorFlow loads only after the params are known to be good.
    from pipeline.training import resume_fingerprint, train

    fingerprint = resume_fingerprint(params, SPLIT_CSV, stage_code_files("train"))
    summary = train(params, split_csv=SPLIT_CSV, model_out=MODEL, ckpt_dir=CHECKPOINTS,
                    history_csv=HISTORY, fingerprint=fingerprint)
    write_json(METRICS, summary)
    print(f"train: best val si-RMSE {summary['best_val_si_rmse']:.4f} at epoch {summary['best_epoch']} -> {MODEL}")


if __name__ == "__main__":
    run_stage(main)
