"""Timing: the self-contained runner's JSON, thread capping, a fresh process for RSS,
the benchmark stage end to end, and the probe on a real registry architecture."""

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

from pipeline import timing

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "pipeline" / "tflite_runner.py"
DOCUMENTED_KEYS = {
    "init_ms", "first_run_ms", "mean_ms", "median_ms", "p90_ms", "min_ms", "max_ms", "times_ms",
    "peak_rss_mb", "baseline_rss_mb", "model_rss_mb", "runtime", "runtime_version", "python",
    "machine", "platform", "cpu_count", "cpus_usable", "threads_requested", "threads",
    "threads_capped", "runs", "warmup", "input_shape", "output_shape", "output_finite", "delegate_partitions",
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    import keras

    from pipeline import tflite

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
    expected = {"mean_ms": times.mean(), "median_ms": np.median(times), "p90_ms": np.percentile(times, 90),
                "min_ms": times.min(), "max_ms": times.max()}
    assert {k: result[k] for k in expected} == pytest.approx(expected, abs=1.01e-3)


def test_runner_percentiles_are_numpys():
    """The runner has no numpy on some devices; its own percentile must agree. Times of a
    tiny model are too alike for the check above to tell two definitions apart."""
    from pipeline.tflite_runner import _percentile

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 7, 10):
        times = rng.uniform(5, 50, n)
        for q in (50, 90):
            assert _percentile(sorted(times), q) == pytest.approx(np.percentile(times, q)), (n, q)


def _own_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_runner_prints_one_json_line_with_documented_keys(model_path):
    proc = subprocess.run([sys.executable, str(RUNNER), str(model_path), "--threads", "1",
                           "--warmup", "1", "--runs", "4"], capture_output=True, text=True, check=True)
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
    missing = subprocess.run([sys.executable, str(RUNNER), str(tmp_path / "nope.tflite")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "model file not found" in missing.stderr
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 10)
    bad = subprocess.run([sys.executable, str(RUNNER), str(garbage)], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot run model" in bad.stderr and "Traceback" not in bad.stderr
    # A python without any TFLite runtime: exit 3 and a line naming the fix.
    fake = tmp_path / "fake"
    for pkg in ("ai_edge_litert", "tflite_runtime"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("raise ImportError('simulated')\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    none = subprocess.run([sys.executable, str(RUNNER), str(model_path)], capture_output=True, text=True, env=env)
    assert none.returncode == 3 and "no TFLite runtime" in none.stderr and "ai-edge-litert" in none.stderr
    with pytest.raises(timing.TimingError, match="garbage.tflite: benchmark failed .*cannot run model"):
        timing.time_local(garbage, threads=1, warmup=0, runs=1)


def test_threads_are_capped_and_reported(model_path):
    cores = timing.usable_cpus()
    capped = timing.time_local(model_path, threads=cores + 3, warmup=0, runs=2)
    assert capped["threads_requested"] == cores + 3
    assert capped["threads"] == cores and capped["threads_capped"] is True
    exact = timing.time_local(model_path, threads=1, warmup=0, runs=2)
    assert exact["threads_requested"] == 1 and exact["threads"] == 1 and exact["threads_capped"] is False


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
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_benchmark_stage_writes_metrics(tmp_path, model_path):
    ws = _stage_workspace(tmp_path, model_path, device="local", threads=64, warmup=1, runs=3)
    proc = _run_stage(ws, "stages.benchmark")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((ws / "metrics" / "benchmark.json").read_text())
    for key in ("device", "threads_requested", "threads", "threads_capped", "init_ms", "mean_ms",
                "median_ms", "p90_ms", "min_ms", "peak_rss_mb", "runtime_s", "runs", "warmup", "machine"):
        assert key in out, key
    assert out["device"].startswith("local:") and out["runs"] == 3 and out["warmup"] == 1
    assert out["threads_requested"] == 64 and out["threads_capped"] is True
    assert len(out["times_ms"]) == 3
    assert_summary_of_times(out)
    assert out["runtime_s"] == pytest.approx(out["median_ms"] / 1000.0, rel=1e-6)
    assert "capped from 64" in proc.stdout


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
    from pipeline.config import load_params
    from pipeline.probe import format_table, probe

    train = dataclasses.replace(load_params(ROOT / "params.yaml").train, height=64, width=96)
    row = probe("mai_baseline_unet", train_cfg=train, precision="int8", threads=1, warmup=0, runs=2,
                height=96, width=128)
    assert row["arch"] == "mai_baseline_unet" and row["precision"] == "int8"
    assert row["params"] > 1000 and row["gmacs"] > 0 and row["size_mb"] > 0
    assert row["median_ms"] > 0 and row["init_ms"] > 0 and row["peak_rss_mb"] > 0
    table = format_table([row])
    assert "mai_baseline_unet" in table and "median ms" in table.splitlines()[0]
