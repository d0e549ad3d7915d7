"""The default network on a GPU through Keras 3's JAX backend: fp32 against mixed_float16.

    .venv/bin/python -m bench.gpu_keras --pack data.npz        (here: the real scenes, packed)
    KERAS_BACKEND=jax python3 -m bench.gpu_keras --data data.npz --out result.json   (on the GPU)

The GPU machine has JAX but no TensorFlow, so this measures the project's model code
(pipeline.model.networks.build_model, the params.yaml default network) with Keras on JAX, not
the TensorFlow training stage: no tf.data, no augmentation, a scale-invariant log loss plus
the gradient term (train.loss's default weights) written with keras.ops. --pack (here, on
the CPU) brings TUM (all 132 pairs, training) and HoloLens (all 187, held out) to the
working size, centre-cropped to 4:3 as data.aspect crop does; depth stays in metres, 0 =
invalid. On the GPU, for each compute policy: images/s of training steps at batch 8 (the
params' batch) and at --big-batch (after --warmup steps, wall clock over the rest), then a
training run of --steps steps at batch 8, and the held-out si-RMSE (official metric at the
working size) beside the constant prediction's and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import HOLOLENS, PARAMS, TUM
from pipeline.core.config import load_params

POLICIES = ("float32", "mixed_float16")


def pack(path: Path) -> None:
    """TUM and HoloLens at params.yaml's working size as one .npz (uint8 RGB, float16 metres)."""
    from PIL import Image

    from pipeline.core.files import read_depth_m, read_rgb
    from pipeline.data.dataset import aspect_crop_box

    train = load_params(PARAMS).train
    arrays = {}
    for name, scene in (("train", TUM), ("val", HOLOLENS)):
        rgbs, depths = [], []
        for rgb_path in sorted((scene / "rgb").glob("*.png")):
            rgb, depth = read_rgb(rgb_path), read_depth_m(scene / "depth" / rgb_path.name)
            top, left, h, w = aspect_crop_box(*rgb.shape[:2], 480, 640)
            rgb, depth = rgb[top : top + h, left : left + w], depth[top : top + h, left : left + w]
            size = (train.width, train.height)
            rgbs.append(np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)))
            depths.append(
                np.asarray(Image.fromarray(depth).resize(size, Image.NEAREST), dtype=np.float16)
            )
        arrays[f"{name}_rgb"], arrays[f"{name}_depth"] = np.stack(rgbs), np.stack(depths)[..., None]
    np.savez_compressed(path, **arrays)
    print(f"{path}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def depth_loss(loss_cfg):
    """silog (train.loss.silog_lambda) x silog_weight + grad_weight x a one-scale gradient
    matching on log depth, masked by valid ground truth, in keras.ops (any backend)."""
    from keras import ops

    def loss(gt, pred):
        pred = ops.cast(pred, "float32")
        mask = ops.cast(gt > 0, "float32")
        n = ops.maximum(ops.sum(mask, axis=[1, 2, 3]), 1.0)
        d = (ops.log(ops.maximum(pred, 1e-6)) - ops.log(ops.maximum(gt, 1e-6))) * mask
        mean_d, mean_d2 = ops.sum(d, axis=[1, 2, 3]) / n, ops.sum(d * d, axis=[1, 2, 3]) / n
        silog = ops.mean(
            ops.sqrt(ops.maximum(mean_d2 - loss_cfg.silog_lambda * mean_d**2, 0.0) + 1e-6)
        )
        mx, my = mask[:, :, 1:] * mask[:, :, :-1], mask[:, 1:] * mask[:, :-1]
        gx, gy = ops.abs(d[:, :, 1:] - d[:, :, :-1]) * mx, ops.abs(d[:, 1:] - d[:, :-1]) * my
        grad = (ops.sum(gx) + ops.sum(gy)) / ops.maximum(ops.sum(mx) + ops.sum(my), 1.0)
        return loss_cfg.silog_weight * silog + loss_cfg.grad_weight * grad

    return loss


def held_out(model, rgb, depth) -> dict:
    from pipeline.core.metrics import constant_baseline_si_rmse, image_metrics

    pred = np.asarray(
        model.predict(rgb.astype(np.float32), batch_size=32, verbose=0), dtype=np.float32
    )
    gt = depth.astype(np.float32)
    si = [image_metrics(pred=p, gt=g)["si_rmse"] for p, g in zip(pred, gt)]
    constant = [constant_baseline_si_rmse(g) for g in gt]
    return {
        "si_rmse": float(np.mean(si)),
        "baseline_si_rmse": float(np.mean(constant)),
        "ratio_to_constant": float(np.mean(si) / np.mean(constant)),
        "n_images": len(si),
    }


def run_policy(policy: str, data, args) -> dict:
    import keras

    import pipeline.model.archs  # noqa: F401  (registers the architectures params.yaml names)
    from pipeline.model.networks import build_model

    params = load_params(PARAMS)
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(params.base.seed)
    x, y = data["train_rgb"].astype(np.float32), data["train_depth"].astype(np.float32)
    out = {"policy": policy}
    for batch in (params.train.batch_size, args.big_batch):  # throughput
        keras.utils.set_random_seed(params.base.seed)
        model = build_model(params.train)
        model.compile(
            optimizer=keras.optimizers.Adam(params.train.learning_rate),
            loss=depth_loss(params.train.loss),
        )
        idx = rng.integers(0, len(x), size=batch)
        xb, yb = x[idx], y[idx]
        for _ in range(args.warmup):
            model.train_on_batch(xb, yb)
        start = time.perf_counter()
        for _ in range(args.timed):
            loss = model.train_on_batch(xb, yb)
        float(np.asarray(loss))  # waits for the device
        out[f"images_per_s_batch{batch}"] = batch * args.timed / (time.perf_counter() - start)
    keras.utils.set_random_seed(params.base.seed)  # the training run: --steps at the params' batch
    model = build_model(params.train)
    model.compile(
        optimizer=keras.optimizers.Adam(params.train.learning_rate),
        loss=depth_loss(params.train.loss),
    )
    batch = params.train.batch_size
    start = time.perf_counter()
    for _ in range(args.steps):
        idx = rng.integers(0, len(x), size=batch)
        flip = rng.random() < 0.5  # the one augmentation: a horizontal flip
        xb, yb = (x[idx, :, ::-1], y[idx, :, ::-1]) if flip else (x[idx], y[idx])
        loss = model.train_on_batch(xb, yb)
    out["train_seconds"] = time.perf_counter() - start
    out["final_loss"] = float(np.asarray(loss))
    out["held_out"] = held_out(model, data["val_rgb"], data["val_depth"])
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pack", type=Path, help="write the packed scenes here and stop (run on the CPU)"
    )
    parser.add_argument("--data", type=Path, help="the packed scenes (--pack's file)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the held-out run")
    parser.add_argument("--big-batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timed", type=int, default=30)
    args = parser.parse_args()
    if args.pack:
        pack(args.pack)
        return
    import keras

    data = dict(np.load(args.data))
    devices = []
    if keras.backend.backend() == "jax":
        import jax

        devices = [f"{d} (jax {jax.__version__})" for d in jax.devices()]
    result = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "devices": devices,
        "steps": args.steps,
        "runs": [run_policy(policy, data, args) for policy in POLICIES],
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    for run in result["runs"]:
        m = run["held_out"]
        print(
            f"{run['policy']:<14} images/s batch 8 {run['images_per_s_batch8']:8.0f}  batch "
            f"{args.big_batch} {run[f'images_per_s_batch{args.big_batch}']:8.0f}  held-out si-RMSE "
            f"{m['si_rmse']:.4f} (constant {m['baseline_si_rmse']:.4f}, ratio "
            f"{m['ratio_to_constant']:.2f})  {args.steps} steps in {run['train_seconds']:.0f} s"
        )


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
