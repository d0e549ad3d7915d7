"""Stage train: fit the core depth model (resumable) and save the best epoch's weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.config import as_flat_dict, load_params
from pipeline.files import write_json

SPLIT_CSV = "data/prepared/split.csv"
MODEL = "models/model.keras"
CHECKPOINTS = "models/checkpoints"
HISTORY = "reports/history.csv"
METRICS = "metrics/train.json"


def fingerprint(params) -> str:
    """What a checkpoint must match to be resumed: train/base params and the split."""
    flat = {k: v for k, v in as_flat_dict(params).items() if k.split(".")[0] in ("base", "train")}
    blob = json.dumps(flat, sort_keys=True).encode() + Path(SPLIT_CSV).read_bytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def main() -> None:
    params = load_params()
    from pipeline.training import train  # TensorFlow loads only after params are known good

    summary = train(params, split_csv=SPLIT_CSV, model_out=MODEL, ckpt_dir=CHECKPOINTS,
                    history_csv=HISTORY, fingerprint=fingerprint(params))
    write_json(METRICS, summary)
    print(f"train: best val si-RMSE {summary['best_val_si_rmse']:.4f} at epoch {summary['best_epoch']} -> {MODEL}")


if __name__ == "__main__":
    run_stage(main)
