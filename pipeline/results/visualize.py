"""Depth pictures: perceptual colormaps applied with numpy, and a 4-up comparison panel.

Ground truth and prediction of one image share one colour range (taken from the valid
ground truth), so equal colours mean equal metres; invalid pixels are a flat gray so
they never read as "near" or "far".
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.core.files import atomic_path

DEPTH_CMAP = "turbo"
ERROR_CMAP = "magma"
INVALID_RGB = (64, 64, 64)


def _lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)


def _valid(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0)


def depth_range(gt, pred=None) -> tuple[float, float]:
    """(vmin, vmax) in metres from the 1st/99th percentile of the valid GT (else of pred)."""
    for arr in (gt, pred):
        if arr is None:
            continue
        arr = np.asarray(arr, dtype=np.float64)
        values = arr[_valid(arr)]
        if values.size:
            lo, hi = np.percentile(values, [1.0, 99.0])
            return float(lo), float(max(hi, lo + 1e-3))
    return 0.0, 1.0


def colorize(values, *, vmin: float, vmax: float, cmap: str = DEPTH_CMAP, valid=None) -> np.ndarray:
    """HxW values -> HxWx3 uint8 through a 256-entry colormap; invalid pixels flat gray."""
    values = np.asarray(values, dtype=np.float64)
    if valid is None:
        valid = _valid(values)
    scaled = (np.nan_to_num(values) - vmin) / max(vmax - vmin, 1e-12)
    idx = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.intp)
    out = _lut(cmap)[idx]
    out[~valid] = INVALID_RGB
    return out


def colorize_depth(depth_m, *, vmin: float, vmax: float) -> np.ndarray:
    return colorize(depth_m, vmin=vmin, vmax=vmax, cmap=DEPTH_CMAP)


def abs_error(*, pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """|pred - gt| in metres and the mask where it is defined (valid GT and finite pred)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    valid = _valid(gt) & np.isfinite(pred)
    err = np.where(valid, np.abs(np.nan_to_num(pred) - np.nan_to_num(gt)), 0.0)
    return err, valid


def save_panel(path: str | os.PathLike, *, rgb, gt, pred, title: str = "") -> None:
    """PNG panel RGB | ground truth | prediction | abs error, with colour bars, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    gt = np.squeeze(np.asarray(gt, dtype=np.float64))
    pred = np.squeeze(np.asarray(pred, dtype=np.float64))
    if gt.shape != pred.shape:
        raise ValueError(f"{path}: gt shape {gt.shape} differs from pred shape {pred.shape}")
    vmin, vmax = depth_range(gt, pred)
    err, err_valid = abs_error(pred=pred, gt=gt)
    emax = float(np.percentile(err[err_valid], 99.0)) if err_valid.any() else 1.0
    emax = max(emax, 1e-3)

    h, w = gt.shape
    # Object-oriented Figure + Agg canvas: no pyplot global state, safe without a display.
    fig = Figure(figsize=(4 * 3.2, 3.2 * h / w + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    images = [
        ("RGB", np.asarray(rgb, dtype=np.uint8)),
        ("ground truth", colorize_depth(gt, vmin=vmin, vmax=vmax)),
        ("prediction", colorize_depth(pred, vmin=vmin, vmax=vmax)),
        ("abs error", colorize(err, vmin=0.0, vmax=emax, cmap=ERROR_CMAP, valid=err_valid)),
    ]
    for ax, (name, img) in zip(axes, images):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    for ax, cmap, lo, hi, label in (
        (axes[2], DEPTH_CMAP, vmin, vmax, "depth [m] (gray = invalid)"),
        (axes[3], ERROR_CMAP, 0.0, emax, "|error| [m]"),
    ):
        bar = fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap), ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
