"""Does a teacher make the default student better on a scene it never saw? One budget for all.

    .venv/bin/python -m bench.distill [--epochs 12] [--steps-per-epoch 20] [--teacher PATH]

Data: TUM (../shared/data/tum_fr1_xyz) is the labelled set. HoloLens
(../shared/data/hololens2_office) is split by sorted name in two: the first half is used
as unlabeled RGB (its depth is never read: only rgb/ is linked), the second half is the
validation scene. Neither the teacher nor any student ever reads HoloLens depth except
the second half's, to score; every student ships its last epoch, so nothing is chosen on
it either.

1. teacher: mobile_unet at width 1.0 and 256x320, trained on TUM alone (validated on
   TUM's last block), exported to TFLite: the "your own teacher" route of the README. With
   --teacher PATH, that published file instead (settings and distillation weights from
   presets/teacher.yaml, fill_invalid off; its own figure: aligned per image to the ground
   truth). It is run once over TUM and the unlabeled half (pipeline/teacher/labels.py).
2. students, the default model (params.yaml's train section) for the same number of
   optimizer steps each, fp32 TFLite, official metrics on the validation half:
     student                  ground truth alone (today's pipeline)
     student+teacher          + train.loss.distill_weight and teacher.fill_invalid
     student+teacher+unlabeled  the same, plus the unlabeled half on teacher depth alone
Each row prints si-RMSE, the constant prediction's si-RMSE and their ratio (< 1 beats it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import (
    HOLOLENS,
    TUM,
    bench_params,
    print_table,
    score_tflite,
    setup_teacher,
    source_entries,
    split_scene,
    teacher_scores,
    train_and_score,
    val_rows,
)
from pipeline.core.config import merge
from pipeline.data.dataset import build_split, list_unlabeled, write_teacher_index

TEACHER_FILE = (
    "models/teacher/teacher.tflite"  # relative to the work folder (teacher.model must be under it)
)


def run(label: str, work: Path, overrides: dict, *, tflite: Path | None = None) -> dict:
    """One configuration through the shared chain, many in this process (not deterministic)."""
    folder = work / "runs" / label
    folder.mkdir(parents=True)  # a label run twice would mix its files
    params = bench_params({"base": {"deterministic": False}}, overrides)
    return train_and_score(
        label, folder, params, teacher_csv=work / "teacher/alignment.csv", tflite=tflite
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--teacher-steps-per-epoch", type=int, default=15)
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument(
        "--max-residual",
        type=float,
        default=0.5,
        help="teacher.max_residual: a briefly trained "
        "metric teacher is off in scale by itself; drop only its gross failures",
    )
    parser.add_argument(
        "--teacher", type=Path, help="a published teacher file instead of training one"
    )
    args = parser.parse_args()
    from pipeline.core.cli import Progress
    from pipeline.teacher.labels import run_teacher, summarize

    default = bench_params()
    results = []
    with tempfile.TemporaryDirectory(prefix="distill_") as tmp:
        work = Path(tmp)
        unlabeled_dir, val_dir = split_scene(HOLOLENS, work / "hololens_halves")
        students = {"tum": str(TUM), "hololens_val": str(val_dir)}  # val: the second half
        if args.teacher:  # 1. a published teacher
            with_teacher, model = setup_teacher(args.teacher, {}, work)
            teacher_cfg = model.cfg
            results.append(
                teacher_scores(
                    model, val_rows(students, "hololens_val"), "teacher (reference)", "hololens_val"
                )
            )
        else:  # 1. the teacher: bigger, trained on the labelled data alone, exported to TFLite
            os.chdir(
                work
            )  # teacher.model is a path under models/teacher/, relative to the project root
            (work / "models/teacher").mkdir(parents=True)
            teacher_train = {
                "arch": "mobile_unet",
                "width_multiplier": 1.0,
                "height": 256,
                "width": 320,
                "epochs": args.teacher_epochs,
                "steps_per_epoch": args.teacher_steps_per_epoch,
            }
            teacher_data = {"sources": source_entries({"tum": TUM}), "val": "blocks"}
            run(
                "teacher-training",
                work,
                {"data": teacher_data, "train": teacher_train},
                tflite=work / TEACHER_FILE,
            )
            # the teacher's own figures on the validation half, as the students are scored
            results.append(
                score_tflite(
                    "teacher (reference)", work / TEACHER_FILE, val_rows(students, "hololens_val")
                )
            )
            model = None
            with_teacher = {
                "teacher": {
                    "model": TEACHER_FILE,
                    "fill_invalid": True,
                    "max_residual": args.max_residual,
                },
                "train": {"loss": {"distill_weight": args.distill_weight}},
            }
            teacher_cfg = bench_params(with_teacher).teacher
        start = time.time()
        labelled = [
            r for r in build_split(students, val="hololens_val") if r["split"] == "train"
        ]  # exactly the students' train rows
        unlabeled = [{**r, "source": "hololens_unlabeled"} for r in list_unlabeled(unlabeled_dir)]
        maps = run_teacher(
            teacher_cfg,
            labelled=labelled,
            unlabeled=unlabeled,
            write_dir=work / "teacher",
            final_dir=work / "teacher",
            progress=Progress("teacher: image", every=30),
            model=model,
        )
        write_teacher_index(work / "teacher/alignment.csv", maps)
        stats = summarize(maps, teacher_cfg)
        print(
            f"teacher maps: {stats['labelled_images']} labelled + {stats['unlabeled_images']} "
            f"unlabeled in {time.time() - start:.0f} s; median residual {stats['median_residual']} "
            f"(RMS log error to TUM ground truth), dropped {stats['dropped']} above "
            f"{stats['max_residual']}",
            flush=True,
        )

        # 2. the students, one budget
        data = {"sources": source_entries(students), "val": "hololens_val"}
        budget = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch}
        with_teacher = merge(with_teacher, {"train": budget})
        results.append(run("student", work, {"data": data, "train": budget}))
        results.append(run("student+teacher", work, {"data": data, **with_teacher}))
        results.append(
            run(
                "student+teacher+unlabeled",
                work,
                {
                    "data": {
                        **data,
                        "unlabeled": {"hololens_unlabeled": {"path": str(unlabeled_dir)}},
                    },
                    **with_teacher,
                },
            )
        )

    t, taught = default.train, bench_params(with_teacher)
    teacher = (
        f"{args.teacher.name} ({teacher_cfg.output}, output {teacher_cfg.output_index})"
        if args.teacher
        else (
            f"mobile_unet x1.0 at 256x320, {args.teacher_epochs} x "
            f"{args.teacher_steps_per_epoch} steps on TUM"
        )
    )
    print(
        f"\nstudent: {t.arch} x{t.width_multiplier} at {t.height}x{t.width}, {args.epochs} x "
        f"{args.steps_per_epoch} steps of batch {t.batch_size} per run; teacher: {teacher}; "
        f"distill_weight {taught.train.loss.distill_weight}, distill_grad_weight "
        f"{taught.train.loss.distill_grad_weight}, fill_invalid "
        f"{'on' if taught.teacher.fill_invalid else 'off'}; official metrics of the fp32 TFLite "
        "models on the second half of HoloLens"
    )
    print_table(results, scene="val scene")


if __name__ == "__main__":
    main()
