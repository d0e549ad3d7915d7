"""Stage teacher: run the teacher model once over the training RGB and the unlabeled images.

Writes data/teacher/SOURCE/depth/NAME.png (uint16 mm, the challenge layout) for every kept
map and data/teacher/alignment.csv (scale, shift, residual, kept, si-RMSE per image), plus
metrics/teacher.json (per source: the teacher's own si-RMSE, a constant's, the ratio). The
maps are a DVC output: retraining the student never reruns the teacher. With teacher.model ""
(the default) it writes an empty alignment.csv and nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.cli import Progress, run_stage, stage_parser, timed
from pipeline.core.config import load_params
from pipeline.core.files import atomic_dir, write_json
from pipeline.core.paths import SPLIT_CSV, TEACHER_INDEX, TEACHER_MAPS, UNLABELED_DIR, metrics_json
from pipeline.data.dataset import read_split, read_unlabeled, write_teacher_index

METRICS = metrics_json("teacher")


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("teacher", __doc__).parse_args(argv)
    params = load_params(args.params)
    cfg = params.teacher
    index = Path(TEACHER_INDEX).relative_to(TEACHER_MAPS)
    if not cfg.model:
        with atomic_dir(TEACHER_MAPS) as tmp:
            write_teacher_index(tmp / index, [])
        write_json(METRICS, timed({"model": ""}))
        print(f"teacher: none configured (teacher.model is empty) -> empty {TEACHER_MAPS}")
        return
    from pipeline.teacher.labels import run_teacher, summarize  # loads TensorFlow / onnxruntime

    labelled = read_split(SPLIT_CSV, "train")  # never the val split: it stays unseen
    unlabeled = [  # each index of the folder data.unlabeled names now (not one run alone since)
        {**row, "source": name}
        for name, src in params.data.unlabeled.items()
        for row in read_unlabeled(f"{UNLABELED_DIR}/{name}.csv", src.path)
    ]
    print(
        f"teacher: {cfg.model} ({cfg.output}) on {len(labelled)} train + {len(unlabeled)} "
        "unlabeled images",
        flush=True,
    )
    with atomic_dir(TEACHER_MAPS) as tmp:
        rows = run_teacher(
            cfg,
            labelled=labelled,
            unlabeled=unlabeled,
            write_dir=tmp,
            final_dir=TEACHER_MAPS,
            progress=Progress("teacher: image"),
        )
        write_teacher_index(tmp / index, rows)
    summary = summarize(rows, cfg)
    write_json(METRICS, timed(summary))
    for source, m in summary[
        "sources"
    ].items():  # the anchor a student on that source is compared to
        if m["n_images"]:
            print(
                f"teacher: {source}: si-RMSE {m['si_rmse']:.4f} on {m['n_images']} images "
                f"(constant {m['baseline_si_rmse']:.4f}, ratio {m['ratio_to_constant']:.2f})"
            )
    print(
        f"teacher: median residual {summary['median_residual']} (RMS log error to the ground "
        f"truth), dropped {summary['dropped']}/{summary['labelled_images']} maps above "
        f"{cfg.max_residual} -> {TEACHER_MAPS}"
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
