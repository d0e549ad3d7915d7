"""Evaluate a depth model on split rows: official metrics per image, averages, pictures.

The model is anything with `.predict(rgb_uint8, out_size=(h, w)) -> HxW metres`, in
practice `pipeline.device.predict.TFLiteDepthModel` on models/model.tflite: the artifact that
is submitted is the one that is scored.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.files import atomic_dir, atomic_path, read_depth_m, read_rgb
from pipeline.core.metrics import (
    METRIC_KEYS,
    average_metrics,
    challenge_score,
    constant_baseline_si_rmse,
    image_metrics,
)
from pipeline.data.dataset import aspect_crop_box

PER_IMAGE_COLUMNS = ("source", "name", "n_valid", *METRIC_KEYS, "baseline_si_rmse")


def _predict(model, row: Mapping[str, str], aspect: str = "stretch"):
    """(rgb, gt, prediction) of one split row, scored at the GT's size.

    aspect='crop' scores the centre crop to the model input's aspect ratio, the part of
    the image that training saw undistorted (pipeline.data.dataset.aspect_crop_box)."""
    rgb = read_rgb(row["rgb"])
    gt = read_depth_m(row["depth"])
    if aspect == "crop":
        top, left, h, w = aspect_crop_box(*gt.shape, *model.input_size)
        rgb, gt = rgb[top : top + h, left : left + w], gt[top : top + h, left : left + w]
    return rgb, gt, model.predict(rgb, out_size=gt.shape)


def _summarize(per_image: Sequence[Mapping]) -> dict:
    """average_metrics plus the constant prediction's si-RMSE and the model's ratio to it."""
    summary = average_metrics(per_image)
    baselines = [r["baseline_si_rmse"] for r in per_image if r["n_valid"] > 0]
    summary["baseline_si_rmse"] = float(np.mean(baselines)) if baselines else math.nan
    summary["ratio_to_constant"] = (
        summary["si_rmse"] / summary["baseline_si_rmse"] if baselines else math.nan
    )
    return summary


def evaluate_model(
    model,
    rows: Sequence[Mapping[str, str]],
    *,
    aspect: str = "stretch",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, list[dict]]:
    """(summary, per-image rows) over `rows` (split.csv dicts with source, name, rgb, depth).

    summary = average_metrics(...) (METRIC_KEYS, n_images, n_skipped) plus
    baseline_si_rmse, the mean si-RMSE a constant prediction scores on the same images
    (the floor any useful model must beat), ratio_to_constant, and the same per source
    under `sources`: a model can beat a constant on one scene and lose on another.
    """
    per_image: list[dict] = []
    for i, row in enumerate(rows, 1):
        _, gt, pred = _predict(model, row, aspect)
        m = image_metrics(pred=pred, gt=gt)
        per_image.append(
            {
                "source": row.get("source", ""),
                "name": row["name"],
                **m,
                "baseline_si_rmse": constant_baseline_si_rmse(gt),
            }
        )
        if progress:
            progress(i, len(rows))
    summary = _summarize(per_image)
    sources = dict.fromkeys(r["source"] for r in per_image)
    summary["sources"] = {
        s: _summarize([r for r in per_image if r["source"] == s]) for s in sources
    }
    return summary, per_image


def add_score(summary: dict, runtime_s: float | None) -> dict:
    """summary + runtime_s and the challenge score, when a runtime is known."""
    if runtime_s is None or not math.isfinite(summary.get("si_rmse", math.nan)):
        return summary
    return {
        **summary,
        "runtime_s": runtime_s,
        "score": challenge_score(si_rmse=summary["si_rmse"], runtime_s=runtime_s),
    }


def write_per_image_csv(path: str | os.PathLike, per_image: Sequence[Mapping]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=PER_IMAGE_COLUMNS, extrasaction="ignore", lineterminator="\n"
            )
            writer.writeheader()
            for r in per_image:
                writer.writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
                )


def worst_and_best(per_image: Sequence[Mapping], n: int) -> tuple[list[Mapping], list[Mapping]]:
    """The n highest and n lowest si-RMSE images (images without valid pixels excluded)."""
    ranked = sorted((r for r in per_image if r["n_valid"] > 0), key=lambda r: r["si_rmse"])
    n = min(n, len(ranked))
    return ranked[::-1][:n], ranked[:n]


def write_panels(
    folder: str | os.PathLike,
    model,
    rows: Sequence[Mapping[str, str]],
    per_image: Sequence[Mapping],
    n: int,
    aspect: str = "stretch",
) -> list[Path]:
    """Panels of the n worst and n best images as worst_<k>_<name>.png / best_<k>_<name>.png.

    Predictions are recomputed for these few images rather than all kept in memory.
    The folder is replaced as a whole, so stale panels of an earlier run never linger.
    """
    from pipeline.results.visualize import save_panel

    by_key = {(r.get("source", ""), r["name"]): r for r in rows}
    worst, best = worst_and_best(per_image, n)
    written = []
    with atomic_dir(folder) as tmp:
        for label, picks in (("worst", worst), ("best", best)):
            for k, m in enumerate(picks, 1):
                rgb, gt, pred = _predict(model, by_key[m["source"], m["name"]], aspect)
                prefix = f"{m['source']}_" if m["source"] else ""
                out = Path(tmp) / f"{label}_{k}_{prefix}{Path(m['name']).stem}.png"
                title = (
                    f"{label} {k}: {prefix}{m['name']}   si-RMSE {m['si_rmse']:.3f} "
                    f"(constant {m['baseline_si_rmse']:.3f})   RMSE {m['rmse']:.2f} m   "
                    f"delta1 {m['delta1']:.2f}"
                )
                save_panel(out, rgb=rgb, gt=gt, pred=pred, title=title)
                written.append(Path(folder) / out.name)
    return written
