"""Stage prepare: validate the data source and write a deterministic train/val split."""

from __future__ import annotations

import sys

from pipeline.cli import Progress, run_stage, stage_parser
from pipeline.config import load_params
from pipeline.data import split_names, validate_source, write_split
from pipeline.errors import DataError
from pipeline.files import write_json

SPLIT_CSV = "data/prepared/split.csv"
METRICS = "metrics/prepare.json"


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("prepare", __doc__).parse_args(argv)
    params = load_params(args.params)
    data = params.data
    source = data.source
    report = validate_source(source, max_images=data.max_images, skip_empty_depth=data.skip_empty_depth,
                             progress=Progress("prepare: checked pair"))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        splits = split_names(report.names, data.val_fraction)
    except DataError as err:
        raise DataError(f"{source}: {err}") from None  # name the folder that is too small
    write_split(SPLIT_CSV, source, splits)
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val")}
    write_json(METRICS, {
        "source": data.source, "train_images": counts["train"], "val_images": counts["val"],
        "skipped_empty_depth": len(report.skipped_empty), "ignored_files": len(report.ignored_files),
        "median_depth_m": round(report.median_depth_m, 4), "invalid_fraction": round(report.invalid_fraction, 4),
        "warnings": len(report.warnings),
    })
    print(f"prepare: {counts['train']} train / {counts['val']} val pairs from {source} -> {SPLIT_CSV}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
