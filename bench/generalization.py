"""Does the default model beat a constant on a scene it never saw? Each lever at one budget.

    .venv/bin/python -m bench.generalization [--epochs 15] [--steps-per-epoch 20] [--seeds 3]
        [--set train.ema=0.99 ...]

Every run trains the default model (params.yaml's train section) for the same number of
optimizer steps, exports it to TFLite and scores it with the official metrics through
the evaluate stage's code, per held-out source, next to the constant prediction's
si-RMSE (std of ln depth) and the ratio of the two:

  tum->hololens, hololens->tum    train on one real scene, validate on all of the other
  ... +synthetic                  the same, starting from a model pretrained on the
                                  procedural scenes (train.init_from; its budget is extra)
  ... +synthetic-mix              the same, with the procedural scenes as a second
                                  training source (same budget, nothing forgotten)
  ... +synthetic-both             pretrained, then the procedural scenes mixed in as well
  synthetic-only                  the pretrained model alone, scored on each real scene
  ... +imagenet                   encoder_weights: imagenet, when keras has the weights
                                  cached (this machine is offline: otherwise skipped)
  tum+hololens                    both scenes mixed, validated on the last block of each

With --teacher PATH (a published teacher, e.g. ../shared/teachers/pydnet_matterport/
pydnet_matterport.tflite; its settings and distillation weights from presets/teacher.yaml unless
--set says otherwise), per direction A->B, the teacher's maps made once by the teacher
stage's code (labelled: A's images, aligned to A's ground truth; unlabeled: the median fit):
  A->B+teacher                    distillation on A's images (train.loss.distill_*weight)
  A->B+teacher+rooms              + the shared unlabeled photographs (data.unlabeled), teacher
                                  depth alone: still no image of B in training
  A->B+teacher+half (sees B)      + the first half of B's names as unlabeled RGB; scored on
                                  the second half only (B's own images, not its depth)
  teacher on B                    the teacher itself, aligned per image to B's ground truth:
                                  the anchor a student is compared to

With a held-out source as validation, training ships the last epoch (never the best on
the scene it reports). Nothing here is tuned on the held-out scenes. One training run is
noisy (a few hundred steps on one scene): --seeds K trains every row K times (base.seed,
+1, ...) and prints the mean and the range of the ratio. --set KEY=VALUE overrides a param
for every run (a lever to compare with a run without it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import (
    REAL,
    ROOMS,
    bench_params,
    parse_set,
    prepare_teacher,
    print_table,
    score_tflite,
    setup_teacher,
    source_entries,
    train_and_score,
    val_rows,
)
from pipeline.core.config import merge


def imagenet_weights_cached(alpha: float) -> bool:
    from keras.src.backend.config import keras_home

    return any(
        (Path(keras_home()) / "models").glob(f"mobilenet_v2_weights_*_{float(alpha)}_*_no_top.h5")
    )


def render_synthetic(args, default) -> Path:
    """The procedural scenes of --synthetic-count/--synthetic-size, rendered into
    --synthetic-dir unless a finished earlier render of the same ones is there."""
    from pipeline.data.synthetic import write_dataset

    height, width = (int(n) for n in args.synthetic_size.split("x"))
    folder, stamp = (
        args.synthetic_dir,
        f"{args.synthetic_count} {height}x{width} seed {default.base.seed}",
    )
    done = folder / "rendered.txt"  # written last: a killed render is redone
    if done.is_file() and done.read_text() == stamp:
        print(f"reusing the {stamp} synthetic scenes in {folder}", flush=True)
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(
            f"--synthetic-dir {folder}: holds something other than the {stamp} scenes; "
            "give an empty or new folder"
        )
    start = time.time()
    write_dataset(
        folder,
        count=args.synthetic_count,
        seed=default.base.seed,
        height=height,
        width=width,
        invalid_fraction=default.data.synthetic.invalid_fraction,
    )
    done.write_text(stamp)
    print(
        f"rendered {args.synthetic_count} synthetic scenes of {width}x{height} in "
        f"{time.time() - start:.0f} s",
        flush=True,
    )
    return folder


def run(
    label: str,
    work: Path,
    *,
    sources: dict[str, str | dict],
    val: str,
    args,
    train=None,
    seed: int | None = None,
    overrides: dict | None = None,
    teacher_csv: Path | None = None,
) -> dict:
    """One configuration at the bench's budget through the shared chain: `train` overrides
    on top of the budget, then any other params `overrides` (data.unlabeled, teacher, ...)."""
    folder = work / (
        label.replace(">", "").replace("+", "_") + ("" if seed is None else f"_seed{seed}")
    )
    folder.mkdir(parents=True)  # a label run twice would mix its files
    params = bench_params(
        args.overrides,
        {
            "base": {} if seed is None else {"seed": seed},
            "data": {"sources": source_entries(sources), "val": val},
            "train": {
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
                **(train or {}),
            },
        },
        overrides,
    )
    return train_and_score(label, folder, params, teacher_csv=teacher_csv)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train every row this many times (seeds "
        "base.seed, +1, ...): mean and range of the ratio",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param override for every run, e.g. train.ema=0.99 (repeatable)",
    )
    parser.add_argument(
        "--synthetic-count", type=int, default=400, help="procedural scenes to pretrain on"
    )
    parser.add_argument(
        "--synthetic-size",
        default="240x320",
        help="HxW the scenes are rendered at (the model "
        "works at params.yaml's train size; rendering at 480x640 costs 4x the time)",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=30,
        help="epochs of the synthetic pretraining (a one-off cost, not part of the per-run budget)",
    )
    parser.add_argument(
        "--synthetic-dir",
        type=Path,
        help="render the scenes into this folder and keep them; "
        "a later run with the same count, size and seed reuses them (default: a temporary folder)",
    )
    parser.add_argument(
        "--synthetic-weight",
        type=float,
        default=1.0,
        help="sampling weight of each procedural "
        "scene when mixed in with real ones (its data.sources weight; a real image's is 1)",
    )
    parser.add_argument("--only", nargs="*", help="run only these labels (and what they need)")
    parser.add_argument(
        "--teacher",
        type=Path,
        help="a teacher model file: adds the teacher rows (settings "
        "from presets/teacher.yaml's teacher section and distillation weights, then --set)",
    )
    args = parser.parse_args()
    args.overrides = parse_set(args.set)
    import tensorflow as tf

    # One op at a time, as base.deterministic asks of every training (it must be set before
    # TensorFlow runs an op, so here, once): reruns give the same figures, and on 2 cores
    # the steps are ~2x faster than with concurrent ops competing for them.
    tf.config.threading.set_inter_op_parallelism_threads(1)

    default = bench_params(args.overrides)
    seeds = [default.base.seed + k for k in range(args.seeds)]

    def wanted(label):
        return not args.only or label in args.only

    results = []

    def runs(label, **kwargs):  # one row of the table: the same run under every seed
        return [run(label, work, args=args, seed=seed, **kwargs) for seed in seeds]

    with tempfile.TemporaryDirectory(prefix="generalization_") as tmp:
        work = Path(tmp)
        args.synthetic_dir = args.synthetic_dir or work / "synthetic"
        directions = (("tum", "hololens"), ("hololens", "tum"))
        if (
            args.teacher
        ):  # the teacher rows first: the rows without one are measured in docs/ already
            results += teacher_rows(args, work, runs, wanted, directions)
        for train_on, held_out in directions:
            if wanted(f"{train_on}->{held_out}"):
                results += runs(f"{train_on}->{held_out}", sources=REAL, val=held_out)
                print_table(results)
        if any(
            wanted(f"{a}->{b}+synthetic{kind}")
            for a, b in directions
            for kind in ("", "-mix", "-both")
        ) or wanted("synthetic-only"):
            synthetic = render_synthetic(args, default)
            mixed = {"path": str(synthetic), "weight": args.synthetic_weight}
        if any(
            wanted(f"{a}->{b}+synthetic{kind}") for a, b in directions for kind in ("", "-both")
        ) or wanted("synthetic-only"):
            pre = run(
                "pretrain-synthetic",
                work,
                sources={"synthetic": str(synthetic)},
                val="blocks",
                args=args,
                train={"epochs": args.pretrain_epochs},
            )
            if wanted("synthetic-only"):  # what the procedural scenes alone teach about real ones
                results += [
                    score_tflite("synthetic-only", pre["tflite"], val_rows(REAL, held_out))
                    for held_out in REAL
                ]
        for train_on, held_out in directions:
            label = f"{train_on}->{held_out}+synthetic"
            if wanted(label):
                results += runs(
                    label, sources=REAL, val=held_out, train={"init_from": str(pre["model"])}
                )
            if wanted(label + "-mix"):
                results += runs(label + "-mix", sources={**REAL, "synthetic": mixed}, val=held_out)
            if wanted(label + "-both"):
                results += runs(
                    label + "-both",
                    sources={**REAL, "synthetic": mixed},
                    val=held_out,
                    train={"init_from": str(pre["model"])},
                )
        imagenet_ok = imagenet_weights_cached(default.train.width_multiplier)
        for train_on, held_out in directions:
            label = f"{train_on}->{held_out}+imagenet"
            if wanted(label) and imagenet_ok:
                results += runs(
                    label, sources=REAL, val=held_out, train={"encoder_weights": "imagenet"}
                )
        if wanted("tum+hololens"):
            results += runs("tum+hololens", sources=REAL, val="blocks")

    print(
        f"\nmodel: {default.train.arch} x{default.train.width_multiplier} at "
        f"{default.train.height}x{default.train.width}; budget {args.epochs} x "
        f"{args.steps_per_epoch} steps of batch {default.train.batch_size} per run; seeds "
        f"{', '.join(map(str, seeds))}; official metrics of the fp32 TFLite model"
        + (f"; --set {' '.join(args.set)}" if args.set else "")
        + (f"; --synthetic-weight {args.synthetic_weight}" if args.synthetic_weight != 1.0 else "")
    )
    if not imagenet_ok:
        print(
            "imagenet: skipped, no cached keras.applications MobileNetV2 weights (they download "
            "from the internet)"
        )
    if args.teacher:
        print(
            f"teacher: {args.teacher} ({args.teacher_cfg.output}, output "
            f"{args.teacher_cfg.output_index}, normalize {args.teacher_cfg.normalize}); "
            f"distill_weight {args.distill.distill_weight}, distill_grad_weight "
            f"{args.distill.distill_grad_weight}"
        )
    print_table(results)


def teacher_rows(args, work: Path, runs, wanted, directions) -> list[dict]:
    """The --teacher rows of both directions (see the docstring), the rows that see no image of
    the held-out scene first."""
    with_teacher, model = setup_teacher(args.teacher, args.overrides, work)
    args.teacher_cfg, args.distill = model.cfg, bench_params(with_teacher).train.loss
    kinds = ("+rooms", "", "+half")
    maps, results = {}, []
    for train_on, held_out in directions:
        if any(wanted(f"{train_on}->{held_out}+teacher{kind}") for kind in kinds):
            maps[train_on] = prepare_teacher(model, work, train_on, held_out)
            results += maps[train_on]["scored"]
    for kind in kinds:
        for train_on, held_out in directions:
            label = f"{train_on}->{held_out}+teacher{kind}"
            if not wanted(label):
                continue
            found = maps[train_on]
            sources, val, unlabeled = REAL, held_out, {}
            if kind == "+rooms":
                unlabeled = {"rooms": {"path": str(ROOMS)}}
            elif (
                kind == "+half"
            ):  # sees B's images (not its depth): scored on the half it did not see
                sources = {train_on: REAL[train_on], f"{held_out}_2nd_half": str(found["second"])}
                val, unlabeled = (
                    f"{held_out}_2nd_half",
                    {f"{held_out}_half": {"path": str(found["first"])}},
                )
            results += runs(
                label,
                sources=sources,
                val=val,
                teacher_csv=found["csv"],
                overrides=merge(with_teacher, {"data": {"unlabeled": unlabeled}}),
            )
            print_table(results)  # so far: a run cut short still leaves its figures
    return results


if __name__ == "__main__":
    main()
