"""Same seed, two runs from scratch: identical data and split, the same evaluation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import dvc_bin, make_project, project_env

# Timing-dependent keys; everything else in metrics/evaluate.json is model quality.
TIMING_KEYS = {"runtime_s", "score"}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_runs_from_scratch_agree(tmp_path):
    roots = [make_project(tmp_path / name) for name in ("a", "b")]
    # Both at once: each run is mostly single-threaded graph tracing, so on 2 cores this
    # costs little more than one run.
    procs = [subprocess.Popen([dvc_bin(), "repro", "evaluate"], cwd=root, env=project_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for root in roots]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    a, b = roots

    synthetic = tree_bytes(a / "data/synthetic")
    assert len(synthetic) == 12  # 6 scenes x (rgb, depth)
    assert synthetic == tree_bytes(b / "data/synthetic")
    assert (a / "data/prepared/split.csv").read_bytes() == (b / "data/prepared/split.csv").read_bytes()
    assert (a / "metrics/prepare.json").read_bytes() == (b / "metrics/prepare.json").read_bytes()

    train_a, train_b = (json.loads((r / "metrics/train.json").read_text()) for r in roots)
    assert train_a["best_val_si_rmse"] == pytest.approx(train_b["best_val_si_rmse"], abs=1e-4)
    assert train_a["final_loss"] == pytest.approx(train_b["final_loss"], abs=1e-4)

    eval_a, eval_b = (json.loads((r / "metrics/evaluate.json").read_text()) for r in roots)
    quality = sorted(set(eval_a) - TIMING_KEYS)
    assert {"si_rmse", "rmse", "rel", "log10", "delta1", "n_images"} <= set(quality)
    for key in quality:
        assert eval_a[key] == pytest.approx(eval_b[key], abs=1e-4), key
