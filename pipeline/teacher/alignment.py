"""A teacher's raw output -> depth in metres, fitted per image to the ground truth.

teacher.output says what the raw map is (pipeline.core.config.TEACHER_OUTPUTS):
  metric            metres already: used as is.
  relative          depth up to a scale that changes per image (PyDNet: larger = farther).
  inverse_relative  inverse depth up to a scale and a shift (MiDaS, DPT, Depth Anything).

A relative map can be aligned in three ways (ALIGNMENTS); `python -m bench.teacher_alignment`
measures each on the shared scenes' labelled images (docs/teacher.md). A labelled image
takes the alignment with the lowest residual there (OUTPUT_ALIGNMENT). An image without
ground truth takes the median of the labelled images' fits of UNLABELED_ALIGNMENT: for
`relative` output that is the scale alone, so its map keeps the teacher's own shape, which
scored as well as or better than a median affine fit (the distillation loss is
scale-invariant). Every fit drops outlier pixels and refits, so a few wrong ground-truth
pixels (edges, reflections) do not bend it.
"""

from __future__ import annotations

import math

import numpy as np

# Inverse depth below 1 / this (or negative, past "infinity" after the shift) becomes this;
# 65 m is the deepest a uint16 mm PNG holds.
MAX_TEACHER_DEPTH_M = 65.0
MIN_TEACHER_DEPTH_M = 0.01  # an affine fit in depth can reach 0 or below: clamp, as the metrics do
MIN_FIT_PIXELS = 100  # fewer valid ground-truth pixels than this: no fit, the map is dropped
TRIM_MADS = 3.0  # outliers: a relative residual above 3 robust standard deviations
# The residual leaves out the worst 10% of pixels: a few wrong ground-truth pixels (edges,
# reflections) would otherwise drop a good teacher map.
RESIDUAL_KEEP = 0.9


def _trimmed_affine(x: np.ndarray, y: np.ndarray, iterations: int) -> tuple[float, float]:
    """(a, b) with a * x + b ~ y by least squares, refitted without outliers of the relative
    error |a x + b - y| / y until the kept set stops changing."""
    keep = np.ones(x.size, dtype=bool)
    for _ in range(iterations):
        design = np.stack([x[keep], np.ones(int(keep.sum()))], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y[keep], rcond=None)
        rel = np.abs(a * x + b - y) / y
        cutoff = max(TRIM_MADS * 1.4826 * float(np.median(rel[keep])), 1e-9)
        new_keep = rel <= cutoff
        if new_keep.sum() < MIN_FIT_PIXELS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return float(a), float(b)


def _valid(raw: np.ndarray, gt_m: np.ndarray, positive_raw: bool) -> np.ndarray | None:
    valid = (gt_m > 0) & np.isfinite(raw) & ((raw > 0) if positive_raw else True)
    return valid if valid.sum() >= MIN_FIT_PIXELS else None


def _fit_affine(
    raw: np.ndarray, gt_m: np.ndarray, target, iterations: int
) -> tuple[float, float] | None:
    """(scale, shift) with scale * raw + shift ~ target(gt) over the valid pixels, trimmed."""
    valid = _valid(raw, gt_m, positive_raw=False)
    if valid is None:
        return None
    return _trimmed_affine(
        raw[valid].astype(np.float64), target(gt_m[valid].astype(np.float64)), iterations
    )


def fit_inverse_depth(
    raw: np.ndarray, gt_m: np.ndarray, iterations: int = 5
) -> tuple[float, float] | None:
    """(scale, shift) with scale * raw + shift ~ 1 / gt: raw is inverse depth (inverse_relative)."""
    return _fit_affine(raw, gt_m, lambda gt: 1.0 / gt, iterations)


def fit_scale(raw: np.ndarray, gt_m: np.ndarray, iterations: int = 5) -> tuple[float, float] | None:
    """(scale, 0) with scale * raw ~ gt: the median of ln gt - ln raw, refitted without the
    pixels whose log error is an outlier (log-scale only: the shape of the map is kept)."""
    valid = _valid(raw, gt_m, positive_raw=True)
    if valid is None:
        return None
    d = np.log(gt_m[valid].astype(np.float64)) - np.log(raw[valid].astype(np.float64))
    keep = np.ones(d.size, dtype=bool)
    for _ in range(iterations):
        log_scale = float(np.median(d[keep]))
        err = np.abs(d - log_scale)
        new_keep = err <= max(TRIM_MADS * 1.4826 * float(np.median(err[keep])), 1e-9)
        if new_keep.sum() < MIN_FIT_PIXELS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return math.exp(log_scale), 0.0


def fit_affine_depth(
    raw: np.ndarray, gt_m: np.ndarray, iterations: int = 5
) -> tuple[float, float] | None:
    """(scale, shift) with scale * raw + shift ~ gt (affine in depth)."""
    return _fit_affine(raw, gt_m, lambda gt: gt, iterations)


def fit_affine_inverse(
    raw: np.ndarray, gt_m: np.ndarray, iterations: int = 5
) -> tuple[float, float] | None:
    """(scale, shift) with scale / raw + shift ~ 1 / gt (affine in inverse depth)."""
    valid = _valid(raw, gt_m, positive_raw=True)
    if valid is None:
        return None
    return fit_inverse_depth(
        np.where(valid, 1.0 / np.where(valid, raw, 1.0), np.nan), gt_m, iterations
    )


def _from_inverse(inverse: np.ndarray) -> np.ndarray:
    return np.where(
        inverse > 1.0 / MAX_TEACHER_DEPTH_M, 1.0 / np.maximum(inverse, 1e-12), MAX_TEACHER_DEPTH_M
    )


# name -> (fit(raw, gt) -> (scale, shift) | None, apply(raw, scale, shift) -> depth in metres)
ALIGNMENTS = {
    "scale": (fit_scale, lambda raw, scale, shift: scale * raw),
    "affine_depth": (fit_affine_depth, lambda raw, scale, shift: scale * raw + shift),
    "affine_inverse": (
        fit_affine_inverse,
        lambda raw, scale, shift: _from_inverse(scale / np.maximum(raw, 1e-12) + shift),
    ),
    "inverse": (fit_inverse_depth, lambda raw, scale, shift: _from_inverse(scale * raw + shift)),
}
# teacher.output -> how a labelled image is aligned (metric needs none). relative: affine in
# inverse depth, the lowest residual on both shared scenes (PyDNet: 0.123 / 0.117 against
# 0.134 / 0.118 affine in depth and 0.135 / 0.133 scale alone; bench.teacher_alignment).
OUTPUT_ALIGNMENT = {"relative": "affine_inverse", "inverse_relative": "inverse"}
# teacher.output -> the fit whose median an unlabeled image takes.
UNLABELED_ALIGNMENT = {"relative": "scale", "inverse_relative": "inverse"}


def fit(raw: np.ndarray, gt_m: np.ndarray, *, output: str, alignment: str | None = None):
    """(scale, shift) that turn this image's raw map into metres, None when it cannot be fitted."""
    if output == "metric":
        return 1.0, 0.0
    return ALIGNMENTS[alignment or OUTPUT_ALIGNMENT[output]][0](raw, gt_m)


def to_depth(
    raw: np.ndarray,
    *,
    output: str,
    scale: float = 1.0,
    shift: float = 0.0,
    alignment: str | None = None,
) -> np.ndarray:
    """The teacher's raw output -> depth in metres, within what a uint16 mm PNG holds."""
    raw = np.nan_to_num(raw.astype(np.float64), nan=0.0)
    if output == "metric":
        return np.clip(raw, 0.0, MAX_TEACHER_DEPTH_M).astype(np.float32)
    depth = ALIGNMENTS[alignment or OUTPUT_ALIGNMENT[output]][1](raw, scale, shift)
    return np.clip(depth, MIN_TEACHER_DEPTH_M, MAX_TEACHER_DEPTH_M).astype(np.float32)


def log_residual(depth_m: np.ndarray, gt_m: np.ndarray) -> float:
    """RMS of ln(depth) - ln(gt) over the best RESIDUAL_KEEP of the pixels valid in both:
    how far the map is from the truth, not counting the ground truth's own outliers."""
    valid = (gt_m > 0) & (depth_m > 0)
    if not valid.any():
        return math.inf
    d2 = np.sort(
        (np.log(depth_m[valid].astype(np.float64)) - np.log(gt_m[valid].astype(np.float64))) ** 2
    )
    return float(np.sqrt(np.mean(d2[: max(1, int(len(d2) * RESIDUAL_KEEP))])))
