"""The organizers' hint as a function: random weights -> TFLite -> time it.

For a new architecture, minutes of work prove that it converts to builtin ops, runs,
and how fast it is relative to the others - before any training. No DVC, no data.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import rpi4

COLUMNS = (  # (title, row key, format); a callable format gets the whole row
    ("arch", "arch", "{}"),
    ("precision", "precision", "{}"),
    ("work size", "working_size", lambda row: "x".join(map(str, row["working_size"]))),
    ("params", "params", "{:,}"),
    ("GMACs", "gmacs", "{:.2f}"),
    ("size MB", "size_mb", "{:.2f}"),
    ("init ms", "init_ms", "{:.1f}"),
    ("median ms", "median_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("est. Pi 4 ms", "est_rpi4_ms", "{:.0f}"),
    ("est. range", "est_rpi4_ms_lo", lambda row: f"{row['est_rpi4_ms_lo']:.0f}..{row['est_rpi4_ms_hi']:.0f}"),
    ("peak RAM MB", "peak_rss_mb", "{:.0f}"),
    ("threads", "threads", "{}"),
    ("XNNPACK parts", "delegate_partitions", "{}"),
)


def random_images(n: int, *, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB 0..255 images (calibration stand-ins when no data is at hand)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, height // 16 + 1, width // 16 + 1, 3))
    img = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :height, :width]
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.float32)


def probe(train_cfg, *, precision: str = "fp32", threads: int = 4, warmup: int = 2,
          runs: int = 10, height: int = 480, width: int = 640, representative=None,
          seed: int = 0, estimate=rpi4.time_local) -> dict:
    """Build train_cfg.arch with random weights, wrap for the device, convert, time it in a
    fresh process with the Pi 4 estimate. For another arch with its own `auto` values, load
    the params with that arch (load_params(overrides=...)), not dataclasses.replace."""
    import keras

    from pipeline import models, tflite

    cfg = dataclasses.replace(train_cfg, encoder_weights="none")
    arch = cfg.arch
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    core = models.build_model(cfg)
    device_model = models.wrap_for_device(core, height=height, width=width)
    if precision == "int8" and representative is None:
        representative = random_images(4, height=height, width=width, seed=seed)
    t0 = time.perf_counter()
    flatbuffer = tflite.convert(device_model, precision=precision, representative=representative)
    convert_s = time.perf_counter() - t0
    summary = tflite.op_summary(flatbuffer)
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        path = Path(tmp) / f"{arch}_{precision}.tflite"
        path.write_bytes(flatbuffer)
        timed = estimate(path, threads=threads, warmup=warmup, runs=runs)
    return {
        "arch": arch,
        "precision": precision,
        "params": int(core.count_params()),
        "gmacs": summary["macs"] / 1e9,
        "size_mb": len(flatbuffer) / 1e6,
        "n_ops": summary["n_ops"],
        "working_size": [cfg.height, cfg.width],
        "device_size": [height, width],
        "convert_s": round(convert_s, 1),
        "min_runtime": tflite.model_min_runtime(flatbuffer),  # the oldest TFLite runtime that runs it
        **{k: timed[k] for k in ("init_ms", "mean_ms", "median_ms", "p90_ms", "min_ms", "peak_rss_mb",
                                 "threads", "threads_requested", "threads_capped", "runs", "warmup",
                                 "delegate_partitions", *rpi4.ESTIMATE_KEYS)},
    }


def format_table(rows: list[dict]) -> str:
    """Rows from `probe` as an aligned plain-text table."""
    header = [title for title, _, _ in COLUMNS]
    body = [["-" if row.get(key) is None else fmt(row) if callable(fmt) else fmt.format(row[key])
             for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
