"""Official MAI metrics against values worked out by hand on tiny arrays."""

import math

import numpy as np
import pytest

from pipeline.core.metrics import (
    average_metrics,
    challenge_score,
    constant_baseline_si_rmse,
    image_metrics,
    runtime_s_from_benchmark,
)

LN2 = math.log(2.0)  # 0.693147...
LOG10_2 = math.log10(2.0)  # 0.301030...


def test_two_pixel_image_all_metrics():
    # P = [2000, 1000] mm, G = [1000, 1000] mm, N = 2
    # d = ln P - ln G = [ln 2, 0]
    # si-RMSE = sqrt(sum d^2 / N - (sum d)^2 / N^2) = sqrt(ln2^2/2 - ln2^2/4) = ln2 / 2
    # RMSE = sqrt(((2000-1000)/1000)^2 / 2 + 0) = sqrt(0.5)
    # log10 = (log10 2 + 0) / 2 ; rel = (1000/1000 + 0) / 2 = 0.5
    # max(P/G, G/P) = [2, 1]: 1 < 1.25 but 2 >= 1.25^3 = 1.953125, so every delta = 1/2
    m = image_metrics(pred=np.array([[2.0, 1.0]]), gt=np.array([[1.0, 1.0]]))
    assert m["n_valid"] == 2
    assert m["si_rmse"] == pytest.approx(LN2 / 2)  # 0.346574
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))  # 0.707107
    assert m["log10"] == pytest.approx(LOG10_2 / 2)  # 0.150515
    assert m["rel"] == pytest.approx(0.5)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.5, 0.5, 0.5)


def test_each_delta_has_its_own_threshold_both_ways():
    # G = 1 m; P = 1.2 m, 1/1.5 m, 1.9 m, 0.4 m -> max(P/G, G/P) = 1.2, 1.5, 1.9, 2.5
    # against 1.25, 1.25^2 = 1.5625 and 1.25^3 = 1.953125: 1, 2 and 3 of the 4 pixels
    m = image_metrics(pred=np.array([1.2, 1 / 1.5, 1.9, 0.4]), gt=np.ones(4))
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.25, 0.5, 0.75)


def test_invalid_pixels_ignored_and_clamping_at_1mm():
    # GT metres [0, 0.0005, 0.002, 1.0] -> mm [0, 0.5, 2, 1000] -> clamped [1, 1, 2, 1000]
    #   mask G > 1 mm keeps only the last two pixels (0.5 mm is clamped to 1 -> invalid)
    # pred metres [5, 5, 0, 1] -> mm [5000, 5000, 0 -> clamped 1, 1000]
    # valid pairs (P, G) = (1, 2) and (1000, 1000); the wild 5 m on invalid pixels is ignored
    # d = [ln(1/2), 0] -> si-RMSE = ln2 / 2
    # RMSE = sqrt(((1 - 2) / 1000)^2 / 2) = sqrt(1e-6 / 2) = 7.0710678e-4 m
    # log10 = (log10 2 + 0) / 2 ; rel = (|1 - 2| / 2 + 0) / 2 = 0.25 ; ratios [2, 1] -> deltas 0.5
    m = image_metrics(pred=np.array([5.0, 5.0, 0.0, 1.0]), gt=np.array([0.0, 0.0005, 0.002, 1.0]))
    assert m["n_valid"] == 2
    assert m["si_rmse"] == pytest.approx(LN2 / 2)
    assert m["rmse"] == pytest.approx(7.0710678e-4)
    assert m["log10"] == pytest.approx(LOG10_2 / 2)
    assert m["rel"] == pytest.approx(0.25)
    assert m["delta1"] == 0.5 and m["delta3"] == 0.5


def test_negative_and_nan_predictions_clamp_to_1mm():
    # P = [-3 m, NaN] both clamp to 1 mm; G = [0.004 m, 0.004 m] = [4 mm, 4 mm]
    # d = [ln(1/4), ln(1/4)] constant -> si-RMSE 0 ; rel = |1 - 4| / 4 = 0.75 for both
    m = image_metrics(pred=np.array([-3.0, np.nan]), gt=np.array([0.004, 0.004]))
    assert m["si_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert m["rel"] == pytest.approx(0.75)
    assert m["rmse"] == pytest.approx(0.003)  # |1 - 4| mm = 0.003 m


def test_scale_invariance():
    # pred = 2 * gt: d = ln 2 everywhere -> si-RMSE 0, while rel = 1 and log10 = log10 2
    gt = np.array([[1.0, 2.5], [7.0, 0.0]])
    m = image_metrics(pred=2.0 * gt, gt=gt)
    assert m["n_valid"] == 3
    assert m["si_rmse"] == pytest.approx(0.0, abs=1e-7)
    assert m["rel"] == pytest.approx(1.0)
    assert m["log10"] == pytest.approx(LOG10_2)
    assert m["delta3"] == 0.0  # ratio 2 is never < 1.953125


def test_per_image_average_differs_from_pooled():
    # A: P = G = [1, 1] m -> si 0, RMSE 0
    # B: P = [2, 2], G = [1, 1] -> d = [ln2, ln2]: si 0, RMSE 1
    # per-image average: si = (0 + 0)/2 = 0 ; RMSE = (0 + 1)/2 = 0.5
    # pooled over the 4 pixels: d = [0, 0, ln2, ln2] -> si = sqrt(2 ln2^2/4 - (2 ln2)^2/16) = ln2/2
    #                           RMSE = sqrt((0 + 0 + 1 + 1)/4) = sqrt(0.5)
    gt = np.ones(2)
    a = image_metrics(pred=np.ones(2), gt=gt)
    b = image_metrics(pred=np.full(2, 2.0), gt=gt)
    avg = average_metrics([a, b])
    pooled = image_metrics(pred=np.array([1.0, 1.0, 2.0, 2.0]), gt=np.ones(4))
    assert avg["n_images"] == 2 and avg["n_skipped"] == 0
    assert avg["si_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert avg["rmse"] == pytest.approx(0.5)
    assert pooled["si_rmse"] == pytest.approx(LN2 / 2)
    assert pooled["rmse"] == pytest.approx(math.sqrt(0.5))


def test_image_without_valid_pixel_is_skipped_and_counted():
    empty = image_metrics(pred=np.ones((2, 2)), gt=np.zeros((2, 2)))
    assert empty["n_valid"] == 0 and math.isnan(empty["si_rmse"])
    good = image_metrics(pred=np.array([2.0, 1.0]), gt=np.array([1.0, 1.0]))
    avg = average_metrics([empty, good, empty])
    assert avg["n_images"] == 1 and avg["n_skipped"] == 2
    assert avg["si_rmse"] == pytest.approx(LN2 / 2)  # only the good image counts
    nothing = average_metrics([empty])
    assert nothing["n_images"] == 0 and math.isnan(nothing["rmse"])


def test_constant_baseline_equals_si_rmse_of_constant_prediction():
    # valid GT e^0 m and e^1 m (the 0 is invalid): ln G(mm) = [ln 1000, ln 1000 + 1]
    # population std of two values 1 apart = 0.5
    gt = np.array([1.0, math.e, 0.0])
    assert constant_baseline_si_rmse(gt) == pytest.approx(0.5)
    for const in (0.3, 3.0, 30.0):
        m = image_metrics(pred=np.full(3, const), gt=gt)
        assert m["si_rmse"] == pytest.approx(0.5)
    assert math.isnan(constant_baseline_si_rmse(np.zeros(4)))


def test_challenge_score():
    # 2^(-20 * 0.05) / (100 * 0.01) = 2^-1 / 1 = 0.5
    assert challenge_score(si_rmse=0.05, runtime_s=0.01) == pytest.approx(0.5)
    # 2^(-20 * 0.1) / (100 * 0.5) = 0.25 / 50 = 0.005
    assert challenge_score(si_rmse=0.1, runtime_s=0.5) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        challenge_score(si_rmse=0.1, runtime_s=0.0)


def test_keyword_only_and_shape_mismatch():
    with pytest.raises(TypeError):
        image_metrics(np.ones(2), np.ones(2))  # argument order must never be guessed
    with pytest.raises(TypeError):
        challenge_score(0.1, 0.5)
    with pytest.raises(ValueError, match="shape"):
        image_metrics(pred=np.ones((2, 3)), gt=np.ones((3, 2)))


def test_runtime_from_benchmark_json():
    assert runtime_s_from_benchmark({"median_ms": 43.0}) == pytest.approx(0.043)
    assert runtime_s_from_benchmark({}) is None
    assert runtime_s_from_benchmark({"median_ms": 0}) is None
