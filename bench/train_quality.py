"""Does training really learn depth? Train on real data within a fixed budget and print
val si-RMSE next to the constant-prediction baseline, for the default model and the
organizers' baseline U-Net, in one run.

    .venv/bin/python -m bench.train_quality [--preset presets/tum.yaml] [--budget-min 9]

Validation is the official metric at full 480x640 resolution (device model, per image
then averaged). Target: default model <= 0.6x the constant baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import bench_params, split_rows
from pipeline.core.config import AUTO
from pipeline.core.files import read_depth_m, read_rgb
from pipeline.core.metrics import average_metrics, constant_baseline_si_rmse, image_metrics
from pipeline.data.dataset import read_split, write_split

# The organizers' baseline: its own (`auto`) values are their U-Net, 64 base filters at 240x320,
# whatever size the preset gives the default model.
BASELINE_OVERRIDES = {
    "arch": "mai_baseline_unet",
    "width_multiplier": AUTO,
    "height": AUTO,
    "width": AUTO,
}


def evaluate_full_res(core, rows) -> dict:
    import numpy as np

    from pipeline.model.networks import wrap_for_device

    device = wrap_for_device(core)
    per_image = []
    for row in rows:
        rgb, gt = read_rgb(row["rgb"]), read_depth_m(row["depth"])
        pred = device(np.asarray(rgb, np.float32)[None], training=False).numpy()[0, ..., 0]
        per_image.append(image_metrics(pred=pred, gt=gt))
    return average_metrics(per_image)


def run(arch_overrides: dict, args, work: Path) -> dict:
    from pipeline.model.training import train

    params = bench_params({"train": arch_overrides}, presets=[args.preset])
    split_csv = work / "split.csv"
    if not split_csv.exists():
        write_split(split_csv, split_rows(params))
    name = params.train.arch
    start = time.time()
    summary = train(
        params,
        split_csv=split_csv,
        model_out=work / f"{name}.keras",
        ckpt_dir=work / f"ckpt_{name}",
        history_csv=work / f"{name}_history.csv",
        fingerprint=name,
        time_budget_s=args.budget_min * 60,
    )
    minutes = (time.time() - start) / 60
    import keras

    core = keras.models.load_model(work / f"{name}.keras", compile=False)
    metrics = evaluate_full_res(core, read_split(split_csv, "val"))
    return {
        "arch": name,
        "res": f"{params.train.height}x{params.train.width}",
        "params": summary["params"],
        "epochs": summary["epochs"],
        "minutes": minutes,
        **metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="presets/tum.yaml")
    parser.add_argument(
        "--budget-min", type=float, default=9.0, help="training wall-clock budget per model"
    )
    parser.add_argument("--only", choices=("default", "baseline"), help="train just one of the two")
    args = parser.parse_args()

    params = bench_params(presets=[args.preset])
    val = read_split_rows(params)
    baseline = sum(constant_baseline_si_rmse(read_depth_m(r["depth"])) for r in val) / len(val)
    runs = [("default", {}), ("baseline", BASELINE_OVERRIDES)]
    results = []
    with tempfile.TemporaryDirectory(prefix="train_quality_") as tmp:
        for label, overrides in runs:
            if args.only and args.only != label:
                continue
            results.append(run(overrides, args, Path(tmp)))

    print(
        f"\ndata: {', '.join(s.path for s in params.data.sources.values())}, {len(val)} val "
        f"images, budget {args.budget_min:g} min per model"
    )
    print(f"constant-prediction baseline si-RMSE (per-image std of ln GT): {baseline:.4f}")
    print(
        f"{'arch':<20} {'res':>8} {'params':>9} {'epochs':>6} {'min':>5} {'si-RMSE':>8} "
        f"{'x const':>7} {'RMSE m':>7} {'rel':>6} {'d1':>6}"
    )
    for r in results:
        print(
            f"{r['arch']:<20} {r['res']:>8} {r['params']:>9,} {r['epochs']:>6} "
            f"{r['minutes']:>5.1f} {r['si_rmse']:>8.4f} {r['si_rmse'] / baseline:>7.2f} "
            f"{r['rmse']:>7.3f} {r['rel']:>6.3f} {r['delta1']:>6.3f}"
        )


def read_split_rows(params):
    return [row for row in split_rows(params) if row["split"] == "val"]


if __name__ == "__main__":
    main()
