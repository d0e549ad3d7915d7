"""Which alignment turns a relative teacher's output into metres best? Measured on labelled images.

    .venv/bin/python -m bench.teacher_alignment [--teacher PATH] [--every 2] [--output-index 0]

Runs the teacher (default: the shared PyDNet, `relative` output, unit normalization) on
every --every-th image of both shared scenes and fits each alignment of
pipeline.teacher.alignment.ALIGNMENTS per image to the ground truth. Prints, per scene and
alignment, the mean residual (RMS log error, worst 10% of pixels left out: what
teacher.max_residual filters on), the mean official si-RMSE of the aligned depth, the
constant prediction's si-RMSE and the ratio; then what an unlabeled image gets, which takes
the median fit of the labelled ones instead of its own: how far an image's own scale is from
the median scale, and the si-RMSE and ratio of the depth at the median fit.
The last column names the alignment the teacher stage uses for labelled images
(OUTPUT_ALIGNMENT: the lowest residual) and the one whose median unlabeled ones take.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from bench.common import REAL, SHARED
from pipeline.core.config import TeacherConfig
from pipeline.core.files import read_depth_m, read_rgb
from pipeline.core.metrics import constant_baseline_si_rmse, image_metrics
from pipeline.teacher.alignment import (
    ALIGNMENTS,
    OUTPUT_ALIGNMENT,
    UNLABELED_ALIGNMENT,
    log_residual,
    to_depth,
)
from pipeline.teacher.model import TeacherModel

PYDNET = SHARED.parent / "teachers" / "pydnet_matterport" / "pydnet_matterport.tflite"
RELATIVE = ("scale", "affine_depth", "affine_inverse")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, default=PYDNET)
    parser.add_argument("--every", type=int, default=2, help="every N-th image of each scene")
    parser.add_argument("--output-index", type=int, default=0)
    args = parser.parse_args()
    model = TeacherModel(
        TeacherConfig(
            model=str(args.teacher),
            output="relative",
            normalize="unit",
            output_index=args.output_index,
        )
    )
    print(
        f"{args.teacher.name}: output {args.output_index}, input {model.size[0]}x{model.size[1]}",
        flush=True,
    )
    table = []
    for scene, folder in REAL.items():
        names = sorted(p.name for p in (Path(folder) / "rgb").glob("*.png"))[:: args.every]
        stats = {name: {"residual": [], "si": [], "scale": [], "fit": []} for name in RELATIVE}
        constants, raws, start = [], [], time.time()
        for i, name in enumerate(names, 1):
            raw = model.predict(read_rgb(Path(folder) / "rgb" / name))
            gt = read_depth_m(Path(folder) / "depth" / name)
            constants.append(constant_baseline_si_rmse(gt))
            raws.append((raw, gt))
            for alignment in RELATIVE:
                scale_shift = ALIGNMENTS[alignment][0](raw, gt)
                if scale_shift is None:
                    continue
                depth = to_depth(
                    raw,
                    output="relative",
                    scale=scale_shift[0],
                    shift=scale_shift[1],
                    alignment=alignment,
                )
                stats[alignment]["residual"].append(log_residual(depth, gt))
                stats[alignment]["si"].append(image_metrics(pred=depth, gt=gt)["si_rmse"])
                stats[alignment]["scale"].append(scale_shift[0])
                stats[alignment]["fit"].append(scale_shift)
            if i % 20 == 0 or i == len(names):
                print(
                    f"  {scene}: {i}/{len(names)} images, {time.time() - start:.0f} s", flush=True
                )
        constant = float(np.mean(constants))
        for alignment in RELATIVE:
            s = stats[alignment]
            log_scales = np.log(np.array(s["scale"])) if alignment == "scale" else None
            spread = (
                float(np.mean(np.abs(log_scales - np.median(log_scales))))
                if log_scales is not None
                else math.nan
            )
            # What an unlabeled image gets: the median fit of the labelled ones, not its own.
            median = np.median(np.array(s["fit"]), axis=0)
            si_at_median = float(
                np.mean(
                    [
                        image_metrics(
                            pred=to_depth(
                                raw,
                                output="relative",
                                scale=median[0],
                                shift=median[1],
                                alignment=alignment,
                            ),
                            gt=gt,
                        )["si_rmse"]
                        for raw, gt in raws
                    ]
                )
            )
            table.append(
                (
                    scene,
                    alignment,
                    len(s["residual"]),
                    float(np.mean(s["residual"])),
                    float(np.mean(s["si"])),
                    constant,
                    spread,
                    si_at_median,
                )
            )
    print(
        f"\n{'scene':<9} {'alignment':<15} {'images':>6} {'residual':>8} {'si-RMSE':>8} "
        f"{'constant':>8} {'ratio':>6} {'|ln s - median|':>15} {'median fit: si-RMSE':>19} "
        f"{'ratio':>6}"
    )
    for scene, alignment, n, residual, si, constant, spread, si_median in table:
        chosen = " ".join(
            ["labelled"] * (alignment == OUTPUT_ALIGNMENT["relative"])
            + ["unlabeled"] * (alignment == UNLABELED_ALIGNMENT["relative"])
        )
        print(
            f"{scene:<9} {alignment:<15} {n:>6} {residual:>8.4f} {si:>8.4f} {constant:>8.4f} "
            f"{si / constant:>6.2f} {spread:>15.3f} {si_median:>19.4f} "
            f"{si_median / constant:>6.2f}  {chosen}"
        )


if __name__ == "__main__":
    main()
