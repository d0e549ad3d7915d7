"""The teacher stage's work: run the teacher once over every image, align, score, write maps.

Labelled images (the train split) are aligned to their ground truth one by one
(pipeline.teacher.alignment) and scored: the residual (RMS log error, worst 10% of pixels
left out) decides whether the map trains (teacher.max_residual), and the official si-RMSE
beside a constant prediction's is the teacher's own figure per source, the anchor a
student is compared to. Unlabeled images take the median of the kept labelled images' fits
(for relative output: of their scale alone, alignment.UNLABELED_ALIGNMENT).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.core.config import TeacherConfig
from pipeline.core.errors import DataError
from pipeline.core.files import read_depth_m, read_rgb, write_depth_png
from pipeline.core.metrics import constant_baseline_si_rmse, image_metrics
from pipeline.teacher.alignment import (
    OUTPUT_ALIGNMENT,
    UNLABELED_ALIGNMENT,
    fit,
    log_residual,
    to_depth,
)
from pipeline.teacher.model import TeacherModel


def label_image(model: TeacherModel, cfg: TeacherConfig, rgb_path, depth_path) -> dict:
    """One labelled image -> its depth in metres (None when it cannot be fitted), its fit, the
    fit an unlabeled image would take the median of, the residual, the official si-RMSE and
    the constant's si-RMSE."""
    raw, gt = model.predict(read_rgb(rgb_path)), read_depth_m(depth_path)
    out = {
        "depth": None,
        "fit": fit(raw, gt, output=cfg.output),
        "residual": math.inf,
        "si_rmse": math.nan,
        "constant": constant_baseline_si_rmse(gt),
    }
    if cfg.output != "metric" and UNLABELED_ALIGNMENT[cfg.output] != OUTPUT_ALIGNMENT[cfg.output]:
        out["unlabeled_fit"] = fit(
            raw, gt, output=cfg.output, alignment=UNLABELED_ALIGNMENT[cfg.output]
        )
    else:
        out["unlabeled_fit"] = out["fit"]
    if out["fit"] is not None:
        out["depth"] = to_depth(raw, output=cfg.output, scale=out["fit"][0], shift=out["fit"][1])
        out["residual"] = log_residual(out["depth"], gt)
        out["si_rmse"] = image_metrics(pred=out["depth"], gt=gt)["si_rmse"]
    return out


def run_teacher(
    cfg: TeacherConfig,
    *,
    labelled: list[dict],
    unlabeled: list[dict],
    write_dir: Path,
    final_dir: str | os.PathLike,
    progress=None,
    num_threads: int | None = None,
    model: TeacherModel | None = None,
) -> list[dict]:
    """Run the teacher once over every image and write its depth maps.

    labelled: rows with source, name, rgb, depth (the ground truth, for alignment, the
    residual and the score); unlabeled: rows with source, name, rgb. Maps go to
    write_dir/SOURCE/depth/NAME.png and are recorded as final_dir/... (write_dir is the
    temporary folder that becomes final_dir). model: a TeacherModel of cfg already loaded
    (benches that label several sets with one). Returns data.TEACHER_COLUMNS rows.
    """
    model = model or TeacherModel(cfg, num_threads=num_threads)
    total, done, rows = len(labelled) + len(unlabeled), 0, []

    def write(row, depth):
        rel = Path(row["source"]) / "depth" / row["name"]
        write_depth_png(write_dir / rel, depth)
        return str(Path(final_dir) / rel)

    fits = []
    for row in labelled:  # first: the unlabeled images take the median of these fits
        image = label_image(model, cfg, row["rgb"], row["depth"])
        kept = image["residual"] <= cfg.max_residual
        out = {
            "source": row["source"],
            "name": row["name"],
            "kind": "labelled",
            "rgb": row["rgb"],
            "teacher": "",
            "scale": "",
            "shift": "",
            "residual": f"{image['residual']:.6f}",
            "kept": int(kept),
            "si_rmse": f"{image['si_rmse']:.6f}",
            "constant_si_rmse": f"{image['constant']:.6f}",
        }
        if image["fit"] is not None:
            out["scale"], out["shift"] = f"{image['fit'][0]:.8g}", f"{image['fit'][1]:.8g}"
        if kept:
            fits.append(image["unlabeled_fit"])
            out["teacher"] = write(row, image["depth"])
        rows.append(out)
        done += 1
        if progress:
            progress(done, total)
    if unlabeled and cfg.output != "metric" and not fits:
        raise DataError(
            f"{cfg.model}: no labelled image kept (all residuals > teacher.max_residual="
            f"{cfg.max_residual}), so the unlabeled images cannot be aligned"
        )
    # No fit kept and no unlabeled image (else raised above): nothing takes the median.
    scale, shift = (
        tuple(np.median(np.array(fits), axis=0)) if fits and cfg.output != "metric" else (1.0, 0.0)
    )
    for row in unlabeled:
        raw = model.predict(read_rgb(row["rgb"]))
        rows.append(
            {
                "source": row["source"],
                "name": row["name"],
                "kind": "unlabeled",
                "rgb": row["rgb"],
                "teacher": write(
                    row,
                    to_depth(
                        raw,
                        output=cfg.output,
                        scale=scale,
                        shift=shift,
                        alignment=UNLABELED_ALIGNMENT.get(cfg.output),
                    ),
                ),
                "scale": f"{scale:.8g}",
                "shift": f"{shift:.8g}",
                "residual": "",
                "kept": 1,
                "si_rmse": "",
                "constant_si_rmse": "",
            }
        )
        done += 1
        if progress:
            progress(done, total)
    return rows


def source_scores(rows: list[dict]) -> dict[str, dict]:
    """Per source of labelled rows: the teacher's mean official si-RMSE over the images it
    could align (kept or not: the teacher's own figure, not the filter's), the constant
    prediction's on the same images, and their ratio (< 1 beats a constant)."""
    out = {}
    for source in sorted({r["source"] for r in rows if r["kind"] == "labelled"}):
        scored = [
            r
            for r in rows
            if r["kind"] == "labelled"
            and r["source"] == source
            and r["si_rmse"] != ""
            and math.isfinite(float(r["si_rmse"]))
        ]
        if not scored:
            out[source] = {"n_images": 0}
            continue
        si = float(np.mean([float(r["si_rmse"]) for r in scored]))
        constant = float(np.mean([float(r["constant_si_rmse"]) for r in scored]))
        out[source] = {
            "n_images": len(scored),
            "si_rmse": round(si, 4),
            "baseline_si_rmse": round(constant, 4),
            "ratio_to_constant": round(si / constant, 4),
        }
    return out


def summarize(rows: list[dict], cfg: TeacherConfig) -> dict:
    """metrics/teacher.json: what ran, how well it matched the ground truth (per source, with
    the constant's si-RMSE and the ratio), what was dropped."""
    labelled = [r for r in rows if r["kind"] == "labelled"]
    residuals = [float(r["residual"]) for r in labelled if math.isfinite(float(r["residual"]))]
    kept = [r for r in labelled if int(r["kept"])]
    return {
        "model": cfg.model,
        "output": cfg.output,
        "output_index": cfg.output_index,
        "labelled_images": len(labelled),
        "unlabeled_images": len(rows) - len(labelled),
        "dropped": len(labelled) - len(kept),
        "max_residual": cfg.max_residual,
        "median_residual": round(float(np.median(residuals)), 4) if residuals else None,
        "median_scale": float(np.median([float(r["scale"]) for r in kept])) if kept else None,
        "median_shift": float(np.median([float(r["shift"]) for r in kept])) if kept else None,
        "sources": source_scores(rows),
    }
