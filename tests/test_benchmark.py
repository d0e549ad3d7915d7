"""Timing: the self-contained runner's JSON, thread capping, a fresh process for RSS,
the benchmark stage end to end, the probe on a real registry architecture, and the
calibrated Pi 4 estimate (arithmetic, cache, where it is shown)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import FAKE_RPI4_LOCAL_MS
from pipeline.core import host
from pipeline.device import rpi4, timing

ROOT = Path(__file__).resolve().parents[1]
RUNNER = timing.RUNNER
DOCUMENTED_KEYS = {
    "init_ms",
    "first_run_ms",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "min_ms",
    "max_ms",
    "times_ms",
    "peak_rss_mb",
    "baseline_rss_mb",
    "model_rss_mb",
    "runtime",
    "runtime_version",
    "python",
    "machine",
    "platform",
    "cpu_count",
    "cpus_usable",
    "threads_requested",
    "threads",
    "threads_capped",
    "runs",
    "warmup",
    "input_shape",
    "output_shape",
    "output_finite",
    "delegate_partitions",
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    import keras

    from pipeline.device import tflite

    inp = keras.Input((48, 64, 3), batch_size=1)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    path = tmp_path_factory.mktemp("bench") / "model.tflite"
    path.write_bytes(tflite.convert(keras.Model(inp, out), precision="fp32"))
    return path


def assert_summary_of_times(result: dict) -> None:
    """mean, median, p90, min and max are those of the recorded times (numpy's percentile
    definition), not merely in the right order: each within the rounding to 3 decimals of
    the times and of itself."""
    times = np.array(result["times_ms"])
    expected = {
        "mean_ms": times.mean(),
        "median_ms": np.median(times),
        "p90_ms": np.percentile(times, 90),
        "min_ms": times.min(),
        "max_ms": times.max(),
    }
    assert {k: result[k] for k in expected} == pytest.approx(expected, abs=1.01e-3)


def test_runner_percentiles_are_numpys():
    """The runner has no numpy on some devices; its own percentile must agree. Times of a
    tiny model are too alike for the check above to tell two definitions apart."""
    from pipeline.device.tflite_runner import _percentile

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 7, 10):
        times = rng.uniform(5, 50, n)
        for q in (50, 90):
            assert _percentile(sorted(times), q) == pytest.approx(np.percentile(times, q)), (n, q)


def _own_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_runner_prints_one_json_line_with_documented_keys(model_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            str(model_path),
            "--threads",
            "1",
            "--warmup",
            "1",
            "--runs",
            "4",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert DOCUMENTED_KEYS <= set(result)
    assert result["runs"] == 4 and len(result["times_ms"]) == 4 and result["warmup"] == 1
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"] <= result["max_ms"]
    assert_summary_of_times(result)
    assert result["input_shape"] == [1, 48, 64, 3] and result["output_shape"] == [1, 48, 64, 1]
    assert result["runtime"] == "ai_edge_litert" and result["init_ms"] > 0
    assert result["threads"] == 1 and result["threads_capped"] is False
    assert result["delegate_partitions"] == 1  # plain convs: the whole graph runs in XNNPACK


def test_runner_errors(model_path, tmp_path):
    missing = subprocess.run(
        [sys.executable, str(RUNNER), str(tmp_path / "nope.tflite")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "model file not found" in missing.stderr
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 10)
    bad = subprocess.run(
        [sys.executable, str(RUNNER), str(garbage)], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and "cannot run model" in bad.stderr and "Traceback" not in bad.stderr
    )
    # A python without any TFLite runtime: exit 3 and a line naming the fix.
    fake = tmp_path / "fake"
    for pkg in ("ai_edge_litert", "tflite_runtime"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("raise ImportError('simulated')\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    none = subprocess.run(
        [sys.executable, str(RUNNER), str(model_path)], capture_output=True, text=True, env=env
    )
    assert (
        none.returncode == 3
        and "no TFLite runtime" in none.stderr
        and "ai-edge-litert" in none.stderr
    )
    with pytest.raises(
        timing.TimingError, match="garbage.tflite: benchmark failed .*cannot run model"
    ):
        timing.time_local(garbage, threads=1, warmup=0, runs=1)


def test_threads_are_capped_and_reported(model_path):
    cores = host.usable_cpus()
    capped = timing.time_local(model_path, threads=cores + 3, warmup=0, runs=2)
    assert capped["threads_requested"] == cores + 3
    assert capped["threads"] == cores and capped["threads_capped"] is True
    exact = timing.time_local(model_path, threads=1, warmup=0, runs=2)
    assert (
        exact["threads_requested"] == 1
        and exact["threads"] == 1
        and exact["threads_capped"] is False
    )


def test_fresh_process_rss_excludes_the_callers_tensorflow(model_path):
    import tensorflow as tf  # noqa: F401  the caller holds TF, as stages do

    parent_mb = _own_rss_mb()
    result = timing.time_local(model_path, threads=1, warmup=1, runs=2)
    # ru_maxrss would inherit the parent's peak across fork+exec; VmHWM does not.
    assert result["peak_rss_mb"] < parent_mb / 2
    assert 0 < result["baseline_rss_mb"] < result["peak_rss_mb"]


def _stage_workspace(tmp_path: Path, model_path: Path, **benchmark) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["benchmark"].update(benchmark)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models").mkdir()
    shutil.copy(model_path, tmp_path / "models" / "model.tflite")
    return tmp_path


def _run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_benchmark_stage_writes_metrics(tmp_path, model_path):
    ws = _stage_workspace(tmp_path, model_path, device="local", threads=64, warmup=1, runs=3)
    proc = _run_stage(ws, "stages.benchmark")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((ws / "metrics" / "benchmark.json").read_text())
    for key in (
        "device",
        "threads_requested",
        "threads",
        "threads_capped",
        "init_ms",
        "mean_ms",
        "median_ms",
        "p90_ms",
        "min_ms",
        "peak_rss_mb",
        "runtime_s",
        "runs",
        "warmup",
        "machine",
    ):
        assert key in out, key
    assert out["device"].startswith("local:") and out["runs"] == 3 and out["warmup"] == 1
    assert out["threads_requested"] == 64 and out["threads_capped"] is True
    assert len(out["times_ms"]) == 3
    assert_summary_of_times(out)
    assert out["runtime_s"] == pytest.approx(out["median_ms"] / 1000.0, rel=1e-6)
    assert "capped from 64" in proc.stdout
    # the estimate, from conftest's fake calibration (ratios 5, 4, 4, 5), next to the measurement
    assert (
        out["est_rpi4_ratios"]
        == {
            "mobilenet_v1": 5.0,
            "mobilenet_v2": 4.0,
            "mobilenet_v3_large": 4.0,
            "mobilenet_v3_small": 5.0,
        }
        and out["est_rpi4_ratio"] == 4.5
    )
    assert out["est_rpi4_ms"] == pytest.approx(4.5 * out["median_ms"], abs=0.06)
    assert (out["est_rpi4_ms_lo"], out["est_rpi4_ms_hi"]) == pytest.approx(
        (4 * out["median_ms"], 5 * out["median_ms"]), abs=0.06
    )
    assert (
        "estimate" in out["est_rpi4_note"]
        and "est. Pi 4 ms" in proc.stdout
        and "an estimate" in proc.stdout
    )


def test_benchmark_stage_rejects_bad_device(tmp_path, model_path):
    ws = _stage_workspace(tmp_path, model_path, device="ssh://root@host;rm -rf /")
    proc = _run_stage(ws, "stages.benchmark")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: params: benchmark.device=")
    assert not (ws / "metrics" / "benchmark.json").exists()


def test_benchmark_stage_missing_model(tmp_path, model_path):
    ws = _stage_workspace(tmp_path, model_path)
    (ws / "models" / "model.tflite").unlink()
    proc = _run_stage(ws, "stages.benchmark")
    assert proc.returncode == 1 and "models/model.tflite: model file not found" in proc.stderr


def test_probe_real_arch_small(tmp_path):
    from pipeline.core.config import load_params
    from pipeline.device.probe import format_table, probe

    train = dataclasses.replace(
        load_params(ROOT / "params.yaml").train, arch="mai_baseline_unet", height=64, width=96
    )
    row = probe(train, precision="int8", threads=1, warmup=0, runs=2, height=96, width=128)
    assert row["arch"] == "mai_baseline_unet" and row["precision"] == "int8"
    assert (
        row["min_runtime"] == "2.2.0"
    )  # int8 runs on the challenge-era runtime (export.target_runtime)
    assert (row["delegate_partitions"], row["not_delegated"]) == (
        1,
        {},
    )  # XNNPACK runs all of it, in int8 too
    assert row["params"] > 1000 and row["gmacs"] > 0 and row["size_mb"] > 0
    assert row["median_ms"] > 0 and row["init_ms"] > 0 and row["peak_rss_mb"] > 0
    assert row["est_rpi4_ms"] == pytest.approx(
        4.5 * row["median_ms"], abs=0.06
    )  # conftest's fake calibration
    table = format_table([row])
    assert "mai_baseline_unet" in table and "median ms" in table.splitlines()[0]


def test_paired_ratio_is_the_median_of_interleaved_ratios():
    """fp32 vs int8 invoked in turns in one process (the runner's --interleave), again in a
    fresh process per repeat; the median of the per-process ratios."""
    from pipeline.device.probe import paired_ratio

    loads = iter([1.0, 3.0, 1.2])  # the machine's load differs between processes, not within one
    calls = []

    def timer(base, *, threads, warmup, runs, references, interleave):
        calls.append((base, references, threads, interleave))
        load, jitter = next(loads), 1 + 0.01 * len(calls)  # int8 / fp32 = 0.505, 0.51, 0.515
        return {
            "median_ms": 99.0,
            "interleaved": {"median_ms": 4.0 * load},
            "references": {"other": {"median_ms": 2.0 * load * jitter}},
        }

    ratio = paired_ratio("fp32.tflite", "int8.tflite", threads=2, repeats=3, timer=timer)
    assert calls[0] == ("fp32.tflite", {"other": "int8.tflite"}, 2, True) and len(calls) == 3
    assert ratio == pytest.approx(0.51)


def test_runner_interleaves_the_references_with_the_model(model_path):
    result = timing.time_local(
        model_path, threads=1, warmup=0, runs=2, references={"again": model_path}, interleave=True
    )
    assert (
        result["runs"] == 2 and len(result["times_ms"]) == 2
    )  # the model's own figures, timed alone first
    assert (
        result["interleaved"]["runs"] == result["references"]["again"]["runs"] == 20
    )  # then 20 rounds
    assert 0 < result["interleaved"]["min_ms"] <= result["interleaved"]["median_ms"]


# ------------------------------------------------------------- the Pi 4 estimate
def test_runner_times_references_after_the_model_in_the_same_process(model_path):
    result = timing.time_local(
        model_path, threads=1, warmup=0, runs=2, references={"again": model_path}
    )
    assert (
        result["runs"] == 2 and len(result["times_ms"]) == 2
    )  # the model's own figures are unchanged
    ref = result["references"]["again"]
    assert (
        ref["runs"] == 20 and 0 < ref["min_ms"] <= ref["median_ms"]
    )  # references get at least 20 runs
    bad = subprocess.run(
        [sys.executable, str(RUNNER), str(model_path), "--reference", "nope"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "NAME=PATH" in bad.stderr


def test_estimate_is_the_median_ratio_with_the_spread_as_range():
    cal = rpi4.calibration_from_times(
        FAKE_RPI4_LOCAL_MS
    )  # published 75/44/41/14 -> ratios 5, 4, 4, 5
    assert cal["ratios"] == pytest.approx(
        {"mobilenet_v1": 5, "mobilenet_v2": 4, "mobilenet_v3_large": 4, "mobilenet_v3_small": 5}
    )
    assert (cal["ratio"], cal["ratio_lo"], cal["ratio_hi"]) == pytest.approx((4.5, 4, 5))
    est = rpi4.estimate(100.0, cal)
    assert (est["est_rpi4_ms"], est["est_rpi4_ms_lo"], est["est_rpi4_ms_hi"]) == (
        450.0,
        400.0,
        500.0,
    )
    # an odd one out moves the median less than the mean: ratios 2, 4, 5, 5 -> median 4.5
    skewed = rpi4.calibration_from_times({**FAKE_RPI4_LOCAL_MS, "mobilenet_v2": 22.0})
    assert (skewed["ratio"], skewed["ratio_lo"], skewed["ratio_hi"]) == pytest.approx((4.5, 2, 5))
    rows = [
        {"arch": "a", "precision": "fp32", **est},
        {"arch": "b", "precision": "int8", **rpi4.estimate(1, skewed)},
    ]
    assert rpi4.describe_rows(rows[:1]) == [f"est. Pi 4 ms: {rpi4.describe(est)}"]
    assert rpi4.describe_rows(rows)[1].startswith(
        "est. Pi 4 ms of b int8: an estimate, not a measurement: local median x 4.50"
    )  # one line per calibration used
    with pytest.raises(timing.TimingError, match="no local time for mobilenet_v3_small"):
        rpi4.calibration_from_times({**FAKE_RPI4_LOCAL_MS, "mobilenet_v3_small": 0})


def test_calibration_is_measured_once_then_read_from_the_cache(tmp_path):
    calls, built, anchor_ms = [], [], [FAKE_RPI4_LOCAL_MS[rpi4.ANCHOR]]

    def timer(path, *, threads, warmup, runs, references=None):
        calls.append(sorted(references or ()))
        times = {**FAKE_RPI4_LOCAL_MS, rpi4.ANCHOR: anchor_ms[0]}
        return {
            "median_ms": 10.0,
            "threads": 1,
            "references": {name: {"median_ms": times[name]} for name in references or ()},
        }

    def build(paths):  # stands in for keras + conversion
        built.append(sorted(paths))
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"tflite")

    def timed():
        return rpi4.time_local(
            "m.tflite",
            threads=1,
            warmup=0,
            runs=1,
            directory=tmp_path,
            timer=timer,
            build=build,
            log=lambda msg: None,
        )

    everything = sorted(rpi4.PUBLISHED_RPI4_MS)
    first = timed()  # the four references, after the model in its timing process
    assert built == [everything] and calls == [everything]
    assert first["est_rpi4_ms"] == 45.0 and "references" not in first
    cached = rpi4.calibration_path(rpi4.calibration_key(1), tmp_path)
    assert json.loads(cached.read_text())["local_ms"] == FAKE_RPI4_LOCAL_MS
    second = timed()  # the model and the anchor only: nothing built, the four not re-timed
    assert calls[1] == [rpi4.ANCHOR] and len(built) == 1
    assert second["est_rpi4_ms"] == 45.0 and second["est_rpi4_ratios"] == first["est_rpi4_ratios"]
    anchor_ms[0] *= 1.2  # within MAX_DRIFT: still the cached calibration
    assert timed()["est_rpi4_ms"] == 45.0 and calls[2] == [rpi4.ANCHOR]
    anchor_ms[0] = (
        FAKE_RPI4_LOCAL_MS[rpi4.ANCHOR] / 3
    )  # the machine runs 3x faster than when calibrated
    third = timed()
    assert (
        calls[3:] == [[rpi4.ANCHOR], everything] and len(built) == 1
    )  # measured again, files reused
    assert json.loads(cached.read_text())["local_ms"][rpi4.ANCHOR] == anchor_ms[0]
    assert third["est_rpi4_ratios"][rpi4.ANCHOR] == 15.0
    cached.write_text("{not json")  # a damaged cache is measured again
    timed()
    assert calls[-1] == everything and json.loads(cached.read_text())[
        "key"
    ] == rpi4.calibration_key(1)


def _other_version(distribution):
    """host.installed, but `distribution`'s version is another one."""
    real = host.installed

    def installed(*asked):
        found = real(*asked)
        return f"{distribution} 99.0" if distribution in asked else found

    return installed


# What a calibration must not be reused across (issue #35): each change, applied with
# monkeypatch, and the threads the second timing asks for (the first: 1).
KEY_CHANGES = {
    "thread count": (lambda mp: None, 2),
    "CPU model": (lambda mp: mp.setattr(host, "cpu_model", lambda: "Another CPU"), 1),
    "CPU identity": (lambda mp: mp.setattr(host, "cpu_id", lambda: "AuthenticAMD family 1"), 1),
    "CPU flags": (lambda mp: mp.setattr(host, "cpu_flags_sha256", lambda: "0123456789ab"), 1),
    "architecture": (lambda mp: mp.setattr(rpi4.platform, "machine", lambda: "aarch64"), 1),
    "usable cores": (lambda mp: mp.setattr(host, "usable_cpus", lambda: 16), 1),
    "runtime version": (
        lambda mp: mp.setattr(host, "installed", _other_version("ai-edge-litert")),
        1,
    ),
    "converter version": (
        lambda mp: mp.setattr(host, "installed", _other_version("tensorflow")),
        1,
    ),
    "reference models": (lambda mp: mp.setattr(rpi4, "CALIBRATION_VERSION", 99), 1),
    "reference size": (lambda mp: mp.setattr(rpi4, "REFERENCE_SIZE", 160), 1),
}


@pytest.mark.parametrize("change", KEY_CHANGES)
def test_a_calibration_is_not_reused_when_what_it_holds_for_changes(change, tmp_path, monkeypatch):
    """Calibrated for 1 thread on this machine, runtime and converter: a change of any one
    of them calibrates again (all four references timed), never reads the cached ratios."""
    monkeypatch.setattr(host, "usable_cpus", lambda: 8)  # 1 and 2 threads, whatever the CPU
    calls = []

    def timer(path, *, threads, warmup, runs, references=None):
        calls.append(sorted(references or ()))
        return {
            "median_ms": 10.0,
            "threads": threads,
            "references": {n: {"median_ms": FAKE_RPI4_LOCAL_MS[n]} for n in references or ()},
        }

    def build(paths):
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"tflite")

    def timed(threads, model="m.tflite", runs=1):
        rpi4.time_local(
            model,
            threads=threads,
            warmup=0,
            runs=runs,
            directory=tmp_path,
            timer=timer,
            build=build,
            log=lambda msg: None,
        )
        return calls[-1]

    everything = sorted(rpi4.PUBLISHED_RPI4_MS)
    assert timed(1) == everything  # calibrated
    assert timed(1, model="other.tflite", runs=5) == [rpi4.ANCHOR]  # the model is not in it
    before = rpi4.calibration_key(1)
    apply, threads = KEY_CHANGES[change]
    apply(monkeypatch)
    assert rpi4.calibration_key(threads) != before
    assert timed(threads) == everything, f"a calibration reused across a change of {change}"


def test_probe_cli_prints_the_estimate_and_its_ratios(tmp_path, capsys):
    import stages.probe
    from pipeline.core.cli import run_stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(
        height=64, width=64, width_multiplier=0.125
    )  # a tiny U-Net, 8 base filters
    params["export"].update(height=64, width=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = [
        "--params",
        str(tmp_path / "params.yaml"),
        "--arch",
        "mai_baseline_unet",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--runs",
        "2",
    ]
    assert run_stage(stages.probe.main, argv) == 0
    out = capsys.readouterr().out.splitlines()
    header, row = out[1], out[3]
    cells = dict(zip([h.strip() for h in header.split("  ") if h.strip()], row.split()))
    assert header.index("est. Pi 4 ms") < header.index("est. range")
    # both printed rounded: est. to 1 ms (0.5), the median to 0.1 ms (4.5 x 0.05)
    assert float(cells["est. Pi 4 ms"]) == pytest.approx(4.5 * float(cells["median ms"]), abs=0.75)
    assert "an estimate, not a measurement" in out[-1] and "x 4.50" in out[-1]
    for name, ratio in (
        ("mobilenet_v1", 5),
        ("mobilenet_v2", 4),
        ("mobilenet_v3_large", 4),
        ("mobilenet_v3_small", 5),
    ):
        assert f"{name} {ratio:.2f}" in out[-1]
