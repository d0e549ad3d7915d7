"""Stage index: validate each data source and list its usable pairs.

    python -m stages.index [NAME ...]      (default: every source in data.sources)

dvc.yaml runs one `index@NAME` per source, each depending on that source's folder, so
changed data reruns only its own check. Writes data/prepared/sources/NAME.csv (pairs with
size and content digest) and NAME.json (what the check found). A source in the organizers'
layout (train/rgb/ + train/depth/, as their archive unpacks) is read from its train/.
"""

from __future__ import annotations

import os
import sys
import time

from pipeline.core.cli import STAGE_SECONDS_KEY, Progress, run_stage, stage_parser, stage_started
from pipeline.core.config import load_params
from pipeline.core.errors import ConfigError
from pipeline.core.files import write_json
from pipeline.core.paths import SOURCES_DIR
from pipeline.data.dataset import validate_source, write_index


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("index", __doc__)
    parser.add_argument("names", nargs="*", help="source names (default: all of data.sources)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    data = params.data
    unknown = [n for n in args.names if n not in data.sources]
    if unknown:
        raise ConfigError(
            f"params: data.sources has no source {unknown[0]!r} (known: {', '.join(data.sources)})"
        )
    mark = stage_started()  # each NAME.json gets the seconds since the previous one
    for name in args.names or list(data.sources):
        path = data.sources[name].path
        report = validate_source(
            path,
            max_images=data.max_images,
            skip_empty_depth=data.skip_empty_depth,
            progress=Progress(f"index {name}: checked pair"),
        )
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        write_index(f"{SOURCES_DIR}/{name}.csv", report)
        sizes = sorted({(p["width"], p["height"]) for p in report.pairs})
        now = time.time()
        # the organizers' layout: the pairs are in the source's train/ (data_folder)
        subfolder = os.path.relpath(report.folder, path)
        write_json(
            f"{SOURCES_DIR}/{name}.json",
            {
                "path": path,
                "folder": report.folder,
                "pairs": len(report.pairs),
                "sizes": [f"{w}x{h}" for w, h in sizes],
                "skipped_empty_depth": len(report.skipped_empty),
                "ignored_files": len(report.ignored_files),
                "median_depth_m": round(report.median_depth_m, 4),
                "invalid_fraction": round(report.invalid_fraction, 4),
                "warnings": len(report.warnings),
                STAGE_SECONDS_KEY: round(now - mark, 1),
            },
        )
        mark = now
        where = path if subfolder == "." else f"{path} (its {subfolder}/, the organizers' layout)"
        print(
            f"index {name}: {len(report.pairs)} pairs ({', '.join(f'{w}x{h}' for w, h in sizes)}) "
            f"from {where} -> {SOURCES_DIR}/{name}.csv"
        )


if __name__ == "__main__":
    sys.exit(run_stage(main))
