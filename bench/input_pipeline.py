"""Is training input bound? Step time with the real tf.data pipeline (parallel decode,
cache, stateless augmentation, prefetch) vs the same model fed from tensors already in
memory, in one run. Target: ratio <= 1.1.

    .venv/bin/python -m bench.input_pipeline [--preset presets/tum.yaml] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

from pipeline.core.config import load_params
from pipeline.data.dataset import build_split


class StepTimer:
    def __init__(self):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_train_batch_begin(cb, batch, logs=None):
                cb.t0 = time.perf_counter()

            def on_train_batch_end(cb, batch, logs=None):
                self.times.append(time.perf_counter() - cb.t0)

        self.times: list[float] = []
        self.callback = _Timer()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="presets/tum.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from pipeline.data.tfdata import PairSource, train_dataset
    from pipeline.model.losses import make_loss
    from pipeline.model.networks import build_model

    params = load_params(presets=[args.preset])
    cfg = params.train
    rows = build_split(
        {name: src.path for name, src in params.data.sources.items()},
        val_fraction=params.data.val_fraction,
    )
    train_rows = [r for r in rows if r["split"] == "train"]
    pairs = PairSource(
        [r["rgb"] for r in train_rows],
        [r["depth"] for r in train_rows],
        cache_max_mb=cfg.cache_max_mb,
        aspect=params.data.aspect,
    )
    total = args.warmup + args.steps
    ds = train_dataset(
        pairs,
        seed=params.base.seed,
        first_epoch=0,
        epochs=1,
        steps_per_epoch=total,
        batch_size=cfg.batch_size,
        height=cfg.height,
        width=cfg.width,
        augment_cfg=cfg.augment,
    )

    def timed_fit(data, label):
        keras.utils.set_random_seed(0)
        model = build_model(cfg)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=make_loss(cfg.loss))
        timer = StepTimer()
        model.fit(
            data,
            epochs=1,
            steps_per_epoch=total,
            callbacks=[timer.callback],
            verbose=0,
            shuffle=False,
        )
        steady = timer.times[args.warmup :]
        print(
            f"{label:<34} median {np.median(steady) * 1000:7.1f} ms/step  mean "
            f"{np.mean(steady) * 1000:7.1f}"
        )
        return float(np.median(steady))

    # The in-memory reference: the very same batches, materialised first.
    batches = list(ds)
    import tensorflow as tf

    in_memory = tf.data.Dataset.from_tensor_slices(
        (tf.concat([b[0] for b in batches], 0), tf.concat([b[1] for b in batches], 0))
    ).batch(cfg.batch_size)
    print(
        f"{cfg.arch} at {cfg.height}x{cfg.width}, batch {cfg.batch_size}, {len(train_rows)} train "
        f"images ({'cached in RAM' if pairs.cached else 'decoded per step'}), {args.steps} timed "
        f"steps after {args.warmup}"
    )
    t_mem = timed_fit(in_memory, "in-memory tensors")
    t_pipe = timed_fit(ds, "tf.data pipeline (decode+augment)")
    print(f"ratio pipeline / in-memory: {t_pipe / t_mem:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
