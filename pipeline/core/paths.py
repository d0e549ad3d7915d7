"""Where the stages read and write: the paths of dvc.yaml's deps and outs, in one place
for the code (relative to the project root, where DVC runs every stage)."""

from __future__ import annotations

SOURCES_DIR = "data/prepared/sources"  # index@NAME: NAME.csv (pairs) and NAME.json (the check)
SPLIT_CSV = "data/prepared/split.csv"
UNLABELED_DIR = "data/prepared/sources/unlabeled"  # unlabeled@NAME: NAME.csv (RGB-only images)
TEACHER_MAPS = (
    "data/teacher"  # the teacher stage: SOURCE/depth/NAME.png (uint16 mm) + alignment.csv
)
TEACHER_INDEX = "data/teacher/alignment.csv"
KERAS_MODEL = "models/model.keras"
CHECKPOINTS = "models/checkpoints"
TFLITE_MODEL = "models/model.tflite"
HISTORY_CSV = "reports/history.csv"
PER_IMAGE_CSV = "reports/eval_per_image.csv"
PANELS_DIR = "reports/eval_panels"
SUBMISSION_ZIP = "submission/submission.zip"
METRICS_DIR = "metrics"


def metrics_json(stage: str) -> str:
    """metrics/<stage>.json: each stage's figures (DVC metrics, logged to MLflow by track)."""
    return f"{METRICS_DIR}/{stage}.json"
