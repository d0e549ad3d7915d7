"""Stage synthesize: render the embedded procedural RGB-D set into data/synthetic."""

from __future__ import annotations

import sys

from pipeline.core.cli import Progress, run_stage, stage_parser
from pipeline.core.config import SYNTHETIC_SOURCE, load_params
from pipeline.core.files import atomic_dir
from pipeline.data.synthetic import write_dataset

OUT = SYNTHETIC_SOURCE


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("synthesize", __doc__).parse_args(argv)
    params = load_params(args.params)
    syn = params.data.synthetic
    with atomic_dir(OUT) as tmp:
        write_dataset(
            tmp,
            count=syn.count,
            seed=params.base.seed,
            height=syn.height,
            width=syn.width,
            invalid_fraction=syn.invalid_fraction,
            progress=Progress("synthesize: scene"),
        )
    print(f"synthesize: {syn.count} scenes of {syn.width}x{syn.height} in {OUT}/")


if __name__ == "__main__":
    sys.exit(run_stage(main))
