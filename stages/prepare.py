"""Stage prepare: one deterministic train/val split over all data sources.

data.val=blocks: the last data.val_fraction of every source (by name) is validation;
data.val=NAME: that source is held out whole, a scene the model never trains on.
Reads the index stage's data/prepared/sources/NAME.csv; writes data/prepared/split.csv.
"""

from __future__ import annotations

import sys

import numpy as np

from pipeline.core.cli import STAGE_SECONDS_KEY, run_stage, stage_parser, timed
from pipeline.core.config import load_params
from pipeline.core.files import read_json, write_json
from pipeline.core.paths import SOURCES_DIR, SPLIT_CSV, metrics_json
from pipeline.data.dataset import (
    check_index_source,
    read_index,
    split_over_sources,
    write_split,
)

METRICS = metrics_json("prepare")


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("prepare", __doc__).parse_args(argv)
    params = load_params(args.params)
    data = params.data
    indexes = {name: read_index(f"{SOURCES_DIR}/{name}.csv") for name in data.sources}
    checks = {name: read_json(f"{SOURCES_DIR}/{name}.json") for name in data.sources}
    for name, src in data.sources.items():  # an index made from another folder (run alone)
        check_index_source(f"{SOURCES_DIR}/{name}.json", name, src.path, checks[name]["path"])
    rows = split_over_sources(indexes, val=data.val, val_fraction=data.val_fraction)
    write_split(SPLIT_CSV, rows)

    def count(split, source=None):
        return sum(r["split"] == split and source in (None, r["source"]) for r in rows)

    per_source = {
        name: {
            "path": src.path,
            "weight": src.weight,
            "train_images": count("train", name),
            "val_images": count("val", name),
            # the index@NAME stage's own time, for the pipeline's (None from an older index)
            "index_seconds": checks[name].get(STAGE_SECONDS_KEY),
            **{
                k: checks[name][k]
                for k in (
                    "sizes",
                    "skipped_empty_depth",
                    "ignored_files",
                    "median_depth_m",
                    "invalid_fraction",
                )
            },
        }
        for name, src in data.sources.items()
    }
    summary = {
        "train_images": count("train"),
        "val_images": count("val"),
        "val": data.val,
        "median_depth_m": round(
            float(np.median([c["median_depth_m"] for c in checks.values()])), 4
        ),
        "invalid_fraction": round(
            sum(c["invalid_fraction"] * c["pairs"] for c in checks.values())
            / sum(c["pairs"] for c in checks.values()),
            4,
        ),
        "skipped_empty_depth": sum(c["skipped_empty_depth"] for c in checks.values()),
        "ignored_files": sum(c["ignored_files"] for c in checks.values()),
        "warnings": sum(c["warnings"] for c in checks.values()),
        "sources": per_source,
    }
    write_json(METRICS, timed(summary))
    for name, s in per_source.items():
        print(
            f"prepare: {name}: {s['train_images']} train / {s['val_images']} val pairs from "
            f"{s['path']}"
        )
    print(f"prepare: {count('train')} train / {count('val')} val pairs -> {SPLIT_CSV}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
