"""Where a student still loses: fitting, resolution or generalization, in one table.

    .venv/bin/python -m bench.error_budget [--student v1-0.5@128x160] [--kind alone|teacher]
        [--direction tum->hololens] [--seeds 1] [--epochs 15] [--steps-per-epoch 20]
        [--teacher ../shared/teachers/pydnet_matterport/pydnet_matterport.tflite]

The student (bench.encoders' names and kinds) trains on the first 80% of scene A's frames only
(the last 20% is A's validation block, held out whole: the last epoch ships, none is picked
on it), at the same budget as bench.encoders. Its fp32 TFLite is scored with the official
metrics on three image sets:
  A's training images       what it fitted
  A's validation block      the next frames of the same video: the same scene, unseen frames
  all of B                  a scene it never saw, nor any image of it
beside, on the same images, the published teacher (aligned per image to their ground truth)
and the resolution floor: the ground truth itself brought down to the working size as training
sees it (nearest) and back up to the image (bilinear, as the device graph resizes): the best any
model at this working size can score. Each figure is a ratio to a constant prediction's
si-RMSE on the same images (lower is better).

Reading it: student - floor on A's training images is what it has not fitted; floor on B is
what the working resolution costs; B - A's validation block is what a new scene costs.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np

from bench.common import (
    REAL,
    ROOMS,
    bench_params,
    encoder_overrides,
    parse_set,
    prepare_teacher,
    score_tflite,
    setup_teacher,
    split_rows,
    split_scene,
    teacher_scores,
    train_and_score,
    val_rows,
)
from bench.encoders import DEFAULT_TEACHER, DIRECTIONS, KINDS
from pipeline.core.config import merge

TRAIN_SHARE = 0.8  # as data.val_fraction's default 0.2: the last fifth of A validates


def _key(rgb: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).digest() + bytes(
        str(rgb.shape), "ascii"
    )


class ResolutionFloor:
    """A 'model' that predicts the ground truth itself as a student at height x width can carry
    it: the depth at the device geometry (480x640, nearest), then at the working size (nearest),
    as training reads it, then back up to the image bilinearly (with the valid pixels' weights,
    so holes do not blend in). Scored by the evaluate stage's code like any model."""

    input_size = (480, 640)  # the device input: evaluate crops to its aspect ratio

    def __init__(self, rows: list[dict], height: int, width: int, aspect: str):
        from pipeline.core.files import read_depth_m, read_rgb
        from pipeline.data.dataset import aspect_crop_box

        self.size, self.maps = (height, width), {}
        for row in rows:
            rgb, gt = read_rgb(row["rgb"]), read_depth_m(row["depth"])
            if aspect == "crop":
                top, left, h, w = aspect_crop_box(*gt.shape, *self.input_size)
                rgb, gt = rgb[top : top + h, left : left + w], gt[top : top + h, left : left + w]
            self.maps[_key(rgb)] = gt

    def predict(self, rgb, out_size):
        import tensorflow as tf

        gt = self.maps[_key(rgb)][None, ..., None]
        low = tf.image.resize(tf.image.resize(gt, self.input_size, "nearest"), self.size, "nearest")
        valid = tf.cast(low > 0, tf.float32)
        weight = tf.image.resize(valid, out_size, "bilinear")
        up = tf.image.resize(low, out_size, "bilinear") / tf.maximum(weight, 1e-6)
        up = np.asarray(up)[0, ..., 0]
        fill = np.median(up[np.asarray(weight)[0, ..., 0] > 0])
        return np.where(np.asarray(weight)[0, ..., 0] > 0, up, fill).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", default="v1-0.5@128x160")
    parser.add_argument("--kind", default="teacher", choices=KINDS)
    parser.add_argument("--direction", default=DIRECTIONS[0], choices=DIRECTIONS)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = parse_set(args.set)
    encoder_overrides(args.student)  # a bad name stops here
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)  # as bench.generalization
    from pipeline.results.evaluation import evaluate_model

    train_on, held_out = args.direction.split("->")
    block = f"{train_on}_val"
    default = bench_params(overrides)
    seeds = [default.base.seed + k for k in range(args.seeds)]
    with tempfile.TemporaryDirectory(prefix="error_budget_") as tmp:
        work = Path(tmp)
        first, last = split_scene(
            Path(REAL[train_on]), work / f"{train_on}_split", fraction=TRAIN_SHARE, first_depth=True
        )
        sources = {train_on: str(first), block: str(last)}
        with_teacher, teacher = setup_teacher(args.teacher, overrides, work)
        maps = prepare_teacher(teacher, work, train_on, block, sources=sources)
        data = {"sources": {n: {"path": p} for n, p in sources.items()}, "val": block}
        train_rows = [r for r in split_rows(bench_params({"data": data})) if r["split"] == "train"]
        if args.kind == "teacher":
            data["unlabeled"] = {"rooms": {"path": str(ROOMS)}}
        sets = {  # image set -> (its split rows, its source name in the scores)
            f"{train_on} training images": (train_rows, train_on),
            f"{train_on} validation block": (val_rows(sources, block), block),
            f"{held_out} (never seen)": (val_rows(REAL, held_out), held_out),
        }
        students: dict[str, list[float]] = {name: [] for name in sets}
        for seed in seeds:
            params = bench_params(
                overrides,
                merge(with_teacher if args.kind == "teacher" else {}, {"data": data}),
                {
                    "base": {"seed": seed},
                    "train": {
                        **encoder_overrides(args.student),
                        "epochs": args.epochs,
                        "steps_per_epoch": args.steps_per_epoch,
                    },
                },
            )
            done = train_and_score(
                f"{args.student} {args.kind}",
                work / f"run_{seed}",
                params,
                teacher_csv=maps["csv"] if args.kind == "teacher" else None,
            )
            for name, (rows, source) in sets.items():
                scored = score_tflite(name, done["tflite"], rows, aspect=params.data.aspect)
                students[name].append(scored["sources"][source]["ratio_to_constant"])
        cfg = params.train
        print(
            f"\n{args.student} ({args.kind}), trained on the first {TRAIN_SHARE:.0%} of "
            f"{train_on}'s frames, {args.epochs} x {args.steps_per_epoch} steps of batch "
            f"{cfg.batch_size}, seeds {', '.join(map(str, seeds))}; working size "
            f"{cfg.height}x{cfg.width}; ratios to a constant prediction on the same images"
        )
        print(
            f"{'image set':<28} {'images':>6} {'constant':>8} {'student':>8} {'range':>11} "
            f"{'teacher':>8} {'floor':>6}"
        )
        for name, (rows, source) in sets.items():
            floor, _ = evaluate_model(
                ResolutionFloor(rows, cfg.height, cfg.width, params.data.aspect),
                rows,
                aspect=params.data.aspect,
            )
            own = teacher_scores(teacher, rows, name, source)["sources"][source]
            ratios = students[name]
            spread = f"{min(ratios):.2f}..{max(ratios):.2f}" if len(ratios) > 1 else ""
            print(
                f"{name:<28} {len(rows):>6} {floor['baseline_si_rmse']:>8.4f} "
                f"{np.mean(ratios):>8.2f} {spread:>11} {own['ratio_to_constant']:>8.2f} "
                f"{floor['ratio_to_constant']:>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
