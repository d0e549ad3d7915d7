"""The official MAI 2021 depth metrics (see ../shared/CHALLENGE.md), deltas and the score.

Inputs are metres like everywhere in the code; the official definitions work in
millimetres (clamp at 1 mm, valid = GT > 1 mm), so the conversion happens here, once.
Everything is computed in float64: sums over 300k pixels lose digits in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from pipeline.core.files import MM_PER_M

METRIC_KEYS = ("rmse", "si_rmse", "log10", "rel", "delta1", "delta2", "delta3")
DELTA_BASE = 1.25
# The benchmark stage's JSON key holding the per-image runtime used for the score and
# the submission readme (metrics/benchmark.json). One place to change if it moves.
BENCHMARK_RUNTIME_KEY = "median_ms"


def _clamped_valid_mm(*, pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Official preprocessing: metres -> mm, clamp both at 1 mm, keep pixels with GT > 1 mm."""
    pred = np.squeeze(np.asarray(pred, dtype=np.float64))
    gt = np.squeeze(np.asarray(gt, dtype=np.float64))
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    p = np.maximum(pred * MM_PER_M, 1.0)
    g = np.maximum(gt * MM_PER_M, 1.0)
    # NaN GT (never valid) and NaN predictions (clamped like 0: a prediction of 1 mm).
    g = np.nan_to_num(g, nan=1.0)
    p = np.nan_to_num(p, nan=1.0, posinf=np.finfo(np.float64).max)
    mask = g > 1.0
    return p[mask], g[mask]


def image_metrics(*, pred, gt) -> dict[str, float]:
    """Official metrics of one image; `pred` and `gt` in metres, same shape, gt 0 = invalid.

    Returns METRIC_KEYS plus `n_valid` (pixels counted). With no valid pixel every
    metric is NaN and `n_valid` is 0; `average_metrics` skips such images.
    """
    p, g = _clamped_valid_mm(pred=pred, gt=gt)
    n = p.size
    if n == 0:
        return {**{k: math.nan for k in METRIC_KEYS}, "n_valid": 0}
    d = np.log(p) - np.log(g)
    # max(0, .) guards the tiny negative that cancellation can leave for constant d.
    si = math.sqrt(max(0.0, float(np.sum(d * d)) / n - float(np.sum(d)) ** 2 / n**2))
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse": math.sqrt(float(np.mean(((p - g) / MM_PER_M) ** 2))),
        "si_rmse": si,
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "rel": float(np.mean(np.abs(p - g) / g)),
        "delta1": float(np.mean(ratio < DELTA_BASE)),
        "delta2": float(np.mean(ratio < DELTA_BASE**2)),
        "delta3": float(np.mean(ratio < DELTA_BASE**3)),
        "n_valid": int(n),
    }


def average_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over images ("average results over all processed images").

    Images without a valid pixel (n_valid == 0) are skipped and counted in `n_skipped`;
    `n_images` is the number averaged. All metrics are NaN when nothing is left.
    """
    kept, skipped = [], 0
    for m in per_image:
        if m.get("n_valid", 1) == 0 or not math.isfinite(m["si_rmse"]):
            skipped += 1
        else:
            kept.append(m)
    out: dict[str, float] = {
        k: (float(np.mean([m[k] for m in kept])) if kept else math.nan) for k in METRIC_KEYS
    }
    out["n_images"] = len(kept)
    out["n_skipped"] = skipped
    return out


def constant_baseline_si_rmse(gt) -> float:
    """si-RMSE that ANY constant prediction scores on this image (NaN if no valid pixel).

    si-RMSE is the standard deviation of d = ln P - ln G; with P constant that is the
    (population) std of ln G over the valid pixels. A model must beat this to have
    learned anything about scene structure.
    """
    g = np.maximum(np.nan_to_num(np.asarray(gt, dtype=np.float64) * MM_PER_M, nan=1.0), 1.0)
    g = g[g > 1.0]
    if g.size == 0:
        return math.nan
    return float(np.std(np.log(g)))


def challenge_score(*, si_rmse: float, runtime_s: float) -> float:
    """Organizers' 2022 ranking score: 2^(-20 * si-RMSE) / (100 * runtime in seconds)."""
    if not (runtime_s > 0 and math.isfinite(runtime_s)):
        raise ValueError(f"runtime_s must be a positive number of seconds, got {runtime_s!r}")
    return 2.0 ** (-20.0 * si_rmse) / (100.0 * runtime_s)


def runtime_s_from_benchmark(benchmark: Mapping) -> float | None:
    """Per-image runtime in seconds from metrics/benchmark.json's content, None if absent."""
    value = benchmark.get(BENCHMARK_RUNTIME_KEY)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not (value > 0 and math.isfinite(value)):
        return None
    return float(value) / 1000.0
