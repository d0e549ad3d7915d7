"""How to fine-tune a pretrained encoder: its batch norms and its learning rate, chosen on the
training scene's own validation block (never on a held-out scene).

    .venv/bin/python -m bench.encoder_start [--encoder v2-1.0] [--scenes tum hololens]
        [--rules frozen trainable refit] [--lr-scales 1.0] [--epochs 15] [--steps-per-epoch 20]
        [--seeds 1] [--set KEY=VALUE ...]

Every run trains mobile_unet with the encoder named by --encoder (bench.common.PRETRAINED: its
file under ../shared/encoders/) on one real scene alone, validated on that scene's last block
(data.val: blocks, the next frames of the same video), for the same number of optimizer steps:
one row per train.encoder_batchnorm rule and train.encoder_lr_scale, and the same encoder from
scratch as the reference. Official metrics of the fp32 TFLite model on the validation block,
beside a constant prediction's si-RMSE; the ratio of the two, lower is better.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import (
    REAL,
    bench_params,
    encoder_overrides,
    parse_set,
    print_table,
    train_and_score,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="v2-1.0", help="a bench.common.PRETRAINED name")
    parser.add_argument("--scenes", nargs="+", default=list(REAL), choices=list(REAL))
    parser.add_argument("--rules", nargs="+", default=["frozen", "trainable", "refit"])
    parser.add_argument("--lr-scales", nargs="+", type=float, default=[1.0])
    parser.add_argument("--no-scratch", action="store_true", help="leave out the scratch row")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a param override"
    )
    args = parser.parse_args()
    overrides = parse_set(args.set)
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)  # as bench.generalization
    default = bench_params(overrides)
    seeds = [default.base.seed + k for k in range(args.seeds)]
    rows = [("scratch", None, None)] if not args.no_scratch else []
    rows += [
        (f"{rule} lr x{scale:g}", rule, scale) for rule in args.rules for scale in args.lr_scales
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="encoder_start_") as tmp:
        for scene in args.scenes:
            for label, rule, scale in rows:
                train = encoder_overrides(args.encoder + ("-scratch" if rule is None else ""))
                if rule is not None:
                    train.update(encoder_batchnorm=rule, encoder_lr_scale=scale)
                for seed in seeds:
                    params = bench_params(
                        overrides,
                        {
                            "base": {"seed": seed},
                            "data": {"sources": {scene: {"path": REAL[scene]}}, "val": "blocks"},
                            "train": {
                                **train,
                                "epochs": args.epochs,
                                "steps_per_epoch": args.steps_per_epoch,
                            },
                        },
                    )
                    name = f"{scene} {label}"
                    folder = Path(tmp) / f"{scene}_{label.replace(' ', '_')}_{seed}"
                    results.append(train_and_score(name, folder, params))
                print_table(results, scene="val block")
    print(
        f"\nencoder {args.encoder}; mobile_unet at {default.train.height}x{default.train.width} "
        f"unless --set; {args.epochs} x {args.steps_per_epoch} steps of batch "
        f"{default.train.batch_size} per run; seeds {', '.join(map(str, seeds))}; each scene "
        "alone, scored on its own last block (data.val: blocks)"
        + (f"; --set {' '.join(args.set)}" if args.set else "")
    )
    print_table(results, scene="val block")


if __name__ == "__main__":
    main()
