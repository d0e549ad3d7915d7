"""Every figure `evaluate` reports, against the official definitions worked out by hand on
three tiny images (../shared/CHALLENGE.md: each metric per image, then the mean over images).

The stage runs as a user runs it (stages.evaluate, metrics/evaluate.json and the per-image
CSV), with the TFLite model swapped for one whose prediction is written in the RGB itself
(red / 10 = metres), so that every prediction, and with it every figure, is known exactly.

The images differ in size and in how many pixels are valid, and their log depths in mean and
spread, so a figure pooled over pixels, or weighted by them, differs from the mean over
images: the constant prediction's si-RMSE, which every ratio divides by, is 1.0 ln 2 per
image then mean, 0.81 ln 2 pooled and 0.64 ln 2 weighted by valid pixels.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core.cli import run_stage
from pipeline.core.files import write_depth_png, write_rgb_png
from pipeline.data.dataset import SPLIT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
LN2, LOG10_2 = math.log(2.0), math.log10(2.0)
RUNTIME_S = 0.01  # metrics/benchmark.json median 10 ms

# GT in metres (0 = invalid) and prediction in metres of each image, 4:3 like the device input
# (so data.aspect's centre crop keeps them whole). With k = log2(depth / 1 m):
#  A, 3x4, source s1: 4 invalid, 4 at 1 m (k 0), 4 at 8 m (k 3); predicts 1 m everywhere.
#     constant: std of k over the 8 valid = 1.5 -> 1.5 ln2; the model is a constant: 1.5 ln2
#     RMSE sqrt((4 x 0 + 4 x 7^2) / 8) = sqrt(24.5) m; log10 (4 x 0 + 4 x 3 log10 2) / 8;
#     rel (4 x 0 + 4 x 7/8) / 8 = 0.4375; max(P/G, G/P) is 1 or 8: every delta 0.5
#  B, 6x8, source s2: all 48 valid, 24 at 1 m (k 0), 24 at 2 m (k 1); predicts the GT, but
#     4 m for 12 of the 2 m pixels.
#     constant: std of k = 0.5 -> 0.5 ln2; d = ln P - ln G is ln2 on 1/4 of the pixels, else 0:
#     si-RMSE ln2 sqrt(1/4 - 1/16) = ln2 sqrt(3)/4; RMSE sqrt(12 x 2^2 / 48) = 1 m;
#     log10 log10(2) / 4; rel 12 x 1 / 48 = 0.25; ratio 2 on 1/4 of the pixels: deltas 0.75
#  C, 3x4, source s2: no valid pixel, skipped and counted.
A_GT = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [8.0, 8.0, 8.0, 8.0]])
A_PRED = np.ones((3, 4))
B_GT = np.tile([1.0, 2.0], (6, 4))
B_PRED = B_GT.copy()
B_PRED[:3, 1::2] = 4.0  # 3 rows x 4 columns = 12 pixels
C_GT = np.zeros((3, 4))
C_PRED = np.ones((3, 4))

A = {
    "si_rmse": 1.5 * LN2,
    "baseline": 1.5 * LN2,
    "rmse": math.sqrt(24.5),
    "log10": 1.5 * LOG10_2,
    "rel": 0.4375,
    "delta": 0.5,
}
B = {
    "si_rmse": LN2 * math.sqrt(3) / 4,
    "baseline": 0.5 * LN2,
    "rmse": 1.0,
    "log10": LOG10_2 / 4,
    "rel": 0.25,
    "delta": 0.75,
}
# Per image, then the mean over the images with a valid pixel (A and B).
OVERALL = {key: (A[key] + B[key]) / 2 for key in A}
BASELINE_MEAN = LN2  # (1.5 + 0.5) / 2 ln2
# What a constant would score pooled over the 56 valid pixels, and weighted by them: wrong.
BASELINE_POOLED = LN2 * math.sqrt(129) / 14  # k: 28 x 0, 24 x 1, 4 x 3 -> var 129/196
BASELINE_PIXEL_WEIGHTED = LN2 * (8 * 1.5 + 48 * 0.5) / 56


class RedChannelModel:
    """Stands in for TFLiteDepthModel: predicts red / 10 metres, at the GT's size."""

    input_size = (480, 640)

    def __init__(self, path, num_threads=None):
        self.path = path

    def predict(self, rgb, out_size):
        assert tuple(out_size) == rgb.shape[:2]  # scored at the GT's own size
        return rgb[..., 0].astype(np.float32) / 10.0


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    """metrics/evaluate.json and the per-image rows of evaluate on A, B and C."""
    from stages import evaluate

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"]["panels"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert params["data"]["aspect"] == "crop"  # the default: a 4:3 image stays whole
    lines = [",".join(SPLIT_COLUMNS)]
    for name, source, gt, pred in (
        ("a.png", "s1", A_GT, A_PRED),
        ("b.png", "s2", B_GT, B_PRED),
        ("c.png", "s2", C_GT, C_PRED),
    ):
        rgb, depth = f"data/{source}/rgb/{name}", f"data/{source}/depth/{name}"
        red = np.rint(pred * 10).astype(np.uint8)
        write_rgb_png(tmp_path / rgb, np.stack([red, red, red], axis=-1))
        write_depth_png(tmp_path / depth, gt)
        lines.append(f"{name},val,{source},{rgb},{depth},,,")
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/split.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/benchmark.json").write_text(json.dumps({"median_ms": RUNTIME_S * 1000}))
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.tflite").write_bytes(b"not read: the model is swapped")
    monkeypatch.setattr(evaluate, "TFLiteDepthModel", RedChannelModel)
    monkeypatch.chdir(tmp_path)
    assert run_stage(evaluate.main, []) == 0
    with open("reports/eval_per_image.csv") as f:
        per_image = {row["name"]: row for row in csv.DictReader(f)}
    return json.loads(Path("metrics/evaluate.json").read_text()), per_image


def test_the_constant_baseline_is_per_image_then_the_mean(evaluated):
    summary, per_image = evaluated
    assert float(per_image["a.png"]["baseline_si_rmse"]) == pytest.approx(A["baseline"], rel=1e-5)
    assert float(per_image["b.png"]["baseline_si_rmse"]) == pytest.approx(B["baseline"], rel=1e-5)
    assert summary["baseline_si_rmse"] == pytest.approx(BASELINE_MEAN, rel=1e-9)
    # the ways to get it wrong are far enough from it to be caught
    for wrong in (BASELINE_POOLED, BASELINE_PIXEL_WEIGHTED):
        assert abs(wrong - BASELINE_MEAN) > 0.1
    assert summary["ratio_to_constant"] == pytest.approx(OVERALL["si_rmse"] / LN2, rel=1e-9)


def test_every_overall_figure_is_the_mean_of_the_images_with_valid_depth(evaluated):
    summary, per_image = evaluated
    assert (summary["n_images"], summary["n_skipped"]) == (2, 1)
    for key in ("si_rmse", "rmse", "log10", "rel"):
        assert summary[key] == pytest.approx(OVERALL[key], rel=1e-6), key
    for key in ("delta1", "delta2", "delta3"):
        assert summary[key] == pytest.approx(OVERALL["delta"]), key
    assert per_image["c.png"]["n_valid"] == "0"
    assert [per_image[n]["n_valid"] for n in ("a.png", "b.png")] == ["8", "48"]
    # the challenge score of that si-RMSE at the benchmark's median: 2^(-20 si) / (100 s)
    assert summary["runtime_s"] == RUNTIME_S
    assert summary["score"] == pytest.approx(
        2 ** (-20 * OVERALL["si_rmse"]) / (100 * RUNTIME_S), rel=1e-9
    )


def test_per_source_figures_are_each_sources_own_images(evaluated):
    summary, _ = evaluated
    s1, s2 = summary["sources"]["s1"], summary["sources"]["s2"]
    assert (s1["n_images"], s1["n_skipped"], s2["n_images"], s2["n_skipped"]) == (1, 0, 1, 1)
    for source, image in ((s1, A), (s2, B)):
        for key in ("si_rmse", "rmse", "log10", "rel"):
            assert source[key] == pytest.approx(image[key], rel=1e-6), key
        assert source["delta1"] == pytest.approx(image["delta"])
        assert source["baseline_si_rmse"] == pytest.approx(image["baseline"], rel=1e-6)
    # A's model is a constant: exactly the constant's si-RMSE; B beats it by sqrt(3)/2
    assert s1["ratio_to_constant"] == pytest.approx(1.0, rel=1e-6)
    assert s2["ratio_to_constant"] == pytest.approx(math.sqrt(3) / 2, rel=1e-6)
