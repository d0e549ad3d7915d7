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

from pipeline.core.config import OUTPUT_RESIZE
from pipeline.device import rpi4, timing

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
    (
        "est. range",
        "est_rpi4_ms_lo",
        lambda row: f"{row['est_rpi4_ms_lo']:.0f}..{row['est_rpi4_ms_hi']:.0f}",
    ),
    ("peak RAM MB", "peak_rss_mb", "{:.0f}"),
    ("threads", "threads", "{}"),
    ("XNNPACK parts", "delegate_partitions", "{}"),
    ("not in XNNPACK", "not_delegated", lambda row: describe_ops(row["not_delegated"])),
)


def describe_ops(counts) -> str:
    """{"TILE": 10, "ADD": 1} -> "TILE x10, ADD"; "-" when empty."""
    return ", ".join(op if n == 1 else f"{op} x{n}" for op, n in counts.items()) or "-"


def random_images(n: int, *, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB 0..255 images (calibration stand-ins when no data is at hand)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, height // 16 + 1, width // 16 + 1, 3))
    img = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :height, :width]
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.float32)


def random_device_model(
    train_cfg,
    *,
    height: int = 480,
    width: int = 640,
    output_resize: str = OUTPUT_RESIZE,
    seed: int = 0,
):
    """(core, device model, 4 random height x width images): train_cfg's architecture with
    fresh weights for `seed` (encoder weights none), batch norms fitted to the images
    (`fit_batchnorm_statistics`)."""
    import keras

    from pipeline.model import networks

    cfg = dataclasses.replace(train_cfg, encoder_weights="none")
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    core = networks.build_model(cfg)
    device_model = networks.wrap_for_device(
        core, height=height, width=width, output_resize=output_resize
    )
    images = random_images(4, height=height, width=width, seed=seed)
    networks.fit_batchnorm_statistics(device_model, images)
    return core, device_model, images


def probe(
    train_cfg,
    *,
    precision: str = "fp32",
    threads: int = 4,
    warmup: int = 2,
    runs: int = 10,
    height: int = 480,
    width: int = 640,
    output_resize: str = OUTPUT_RESIZE,
    representative=None,
    seed: int = 0,
    estimate=rpi4.time_local,
    keep_dir=None,
) -> dict:
    """Build train_cfg.arch with random weights, wrap for the device, convert, time it in a
    fresh process with the Pi 4 estimate. For another arch with its own `auto` values, load
    the params with that arch (load_params(overrides=...)), not dataclasses.replace.

    The batch norms take the statistics of a few random images (`fit_batchnorm_statistics`),
    so that int8 calibrates to a trained model's scales; the row says how XNNPACK takes the
    model (`delegate_partitions`, measured again in the timing process, and `not_delegated`).
    With `keep_dir`, the .tflite stays there (row["tflite"]) for timings of its own.
    """
    from pipeline.device import tflite

    core, device_model, images = random_device_model(
        train_cfg, height=height, width=width, output_resize=output_resize, seed=seed
    )
    arch = train_cfg.arch
    if precision == "int8" and representative is None:
        representative = images
    t0 = time.perf_counter()
    flatbuffer = tflite.convert(device_model, precision=precision, representative=representative)
    convert_s = time.perf_counter() - t0
    summary = tflite.op_summary(flatbuffer)
    delegation = tflite.delegation(flatbuffer)
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        path = Path(keep_dir or tmp) / f"{arch}_{precision}.tflite"
        path.write_bytes(flatbuffer)
        timed = estimate(path, threads=threads, warmup=warmup, runs=runs)
    return {
        **({"tflite": str(path)} if keep_dir else {}),
        "arch": arch,
        "precision": precision,
        "params": int(core.count_params()),
        "gmacs": summary["macs"] / 1e9,
        "size_mb": len(flatbuffer) / 1e6,
        "n_ops": summary["n_ops"],
        "working_size": [train_cfg.height, train_cfg.width],
        "device_size": [height, width],
        "output_resize": output_resize,
        "convert_s": round(convert_s, 1),
        "min_runtime": tflite.model_min_runtime(
            flatbuffer
        ),  # the oldest TFLite runtime that runs it
        "not_delegated": delegation["not_delegated"],  # op -> count left to the builtin kernels
        **{
            k: timed[k]
            for k in (
                "init_ms",
                "mean_ms",
                "median_ms",
                "p90_ms",
                "min_ms",
                "peak_rss_mb",
                "threads",
                "threads_requested",
                "threads_capped",
                "runs",
                "warmup",
                "delegate_partitions",
                *rpi4.ESTIMATE_KEYS,
            )
        },
    }


def format_table(rows: list[dict]) -> str:
    """Rows from `probe` as an aligned plain-text table."""
    header = [title for title, _, _ in COLUMNS]
    body = [
        [
            "-" if row.get(key) is None else fmt(row) if callable(fmt) else fmt.format(row[key])
            for _, key, fmt in COLUMNS
        ]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))
        )
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def paired_ratio(
    base,
    other,
    *,
    threads: int,
    warmup: int = 3,
    runs: int = 20,
    repeats: int = 2,
    timer=timing.time_local,
) -> float:
    """Median over `repeats` fresh processes of other's median latency / base's, the two
    invoked in turns within each (the runner's --interleave): on shared cores the load
    changes between processes and over seconds, so timings apart make noise-prone ratios."""
    ratios = []
    for _ in range(repeats):
        result = timer(
            base,
            threads=threads,
            warmup=warmup,
            runs=runs,
            references={"other": other},
            interleave=True,
        )
        ratios.append(
            result["references"]["other"]["median_ms"] / result["interleaved"]["median_ms"]
        )
    return float(np.median(ratios))


# What resize_share times next to the device graph, in the same process.
SHARE_PARTS = ("core", "input_resize", "output_bilinear", "output_separable", "device_separable")


def resize_share(
    train_cfg,
    *,
    precision: str = "fp32",
    threads: int = 4,
    warmup: int = 3,
    runs: int = 20,
    repeats: int = 3,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    timer=timing.time_local,
) -> dict:
    """Where the device graph's time goes: the graph (output_resize bilinear), its core alone
    at the working size, the input resize alone and the output resize alone (one
    RESIZE_BILINEAR, and `separable`), and the device graph with the separable resize.

    All are converted from one random-weight model and timed in one fresh process per repeat,
    invoked in turns (the runner's --interleave: all see the same load); medians over `repeats`.
    The resize graphs are converted in float: int8 export keeps the device graph's resizes in
    float too (`tflite.edge_nodes`). Returns {"ms": {name: median}, "share": {name: of device}}.
    """
    import keras

    from pipeline.device import tflite
    from pipeline.model import networks
    from pipeline.model.networks.layers import separable_resize

    core, device_model, images = random_device_model(
        train_cfg, height=height, width=width, seed=seed
    )
    work_h, work_w = train_cfg.height, train_cfg.width
    work_images = np.asarray(
        keras.layers.Resizing(work_h, work_w, interpolation="bilinear")(images)
    )

    def graph(shape, fn):
        inp = keras.Input(shape, batch_size=1)
        return keras.Model(inp, fn(inp))

    built = {
        "device": (device_model, precision, images),
        "core": (core, precision, work_images),
        "input_resize": (
            graph(
                (height, width, 3), keras.layers.Resizing(work_h, work_w, interpolation="bilinear")
            ),
            "fp32",
            None,
        ),
        "output_bilinear": (
            graph(
                (work_h, work_w, 1), keras.layers.Resizing(height, width, interpolation="bilinear")
            ),
            "fp32",
            None,
        ),
        "output_separable": (
            graph((work_h, work_w, 1), lambda x: separable_resize(x, height, width, "up")),
            "fp32",
            None,
        ),
        "device_separable": (
            networks.wrap_for_device(core, height=height, width=width, output_resize="separable"),
            precision,
            images,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in built}
    with tempfile.TemporaryDirectory(prefix="resize-share-") as tmp:
        paths = {}
        for name, (model, prec, rep) in built.items():
            paths[name] = Path(tmp) / f"{name}.tflite"
            paths[name].write_bytes(tflite.convert(model, precision=prec, representative=rep))
        for _ in range(repeats):
            result = timer(
                paths["device"],
                threads=threads,
                warmup=warmup,
                runs=runs,
                references={name: paths[name] for name in SHARE_PARTS},
                interleave=True,
            )
            times["device"].append(result["interleaved"]["median_ms"])
            for name in SHARE_PARTS:
                times[name].append(result["references"][name]["median_ms"])
    ms = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "arch": train_cfg.arch,
        "precision": precision,
        "working_size": [work_h, work_w],
        "device_size": [height, width],
        "threads": result["threads"],
        "repeats": repeats,
        "ms": ms,
        "share": {name: value / ms["device"] for name, value in ms.items()},
    }
