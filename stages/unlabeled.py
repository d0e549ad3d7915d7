"""Stage unlabeled: list the RGB-only images of each data.unlabeled folder.

    python -m stages.unlabeled [NAME ...]   (default: every entry of data.unlabeled)

dvc.yaml runs one `unlabeled@NAME` per folder, each depending on that folder, so the
teacher stage reruns when those images change. Writes
data/prepared/sources/unlabeled/NAME.csv (name, size and content digest of each RGB).
"""

from __future__ import annotations

import sys

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import load_params
from pipeline.core.errors import ConfigError
from pipeline.core.paths import UNLABELED_DIR
from pipeline.data.dataset import list_unlabeled, write_unlabeled


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("unlabeled", __doc__)
    parser.add_argument("names", nargs="*", help="names (default: all of data.unlabeled)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    folders = params.data.unlabeled
    unknown = [n for n in args.names if n not in folders]
    if unknown:
        raise ConfigError(
            f"params: data.unlabeled has no entry {unknown[0]!r} (known: "
            f"{', '.join(folders) or 'none'})"
        )
    for name in args.names or list(folders):
        rows = list_unlabeled(folders[name].path, max_images=params.data.max_images)
        write_unlabeled(f"{UNLABELED_DIR}/{name}.csv", rows)
        print(
            f"unlabeled {name}: {len(rows)} RGB images from {folders[name].path} -> "
            f"{UNLABELED_DIR}/{name}.csv"
        )


if __name__ == "__main__":
    sys.exit(run_stage(main))
