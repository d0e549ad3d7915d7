"""Same seed, two runs from scratch: identical data, split and weights, the same evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, dvc_bin, make_project, project_env, weight_arrays

# Timing-dependent keys; everything else in metrics/evaluate.json is model quality.
TIMING_KEYS = {"runtime_s", "score", "stage_seconds"}


def untimed(metrics: dict) -> dict:
    """A stage's metrics without the times it records (stage_seconds, a source's index_seconds)."""
    return {
        key: untimed(value) if isinstance(value, dict) else value
        for key, value in metrics.items()
        if key not in (*TIMING_KEYS, "index_seconds")
    }


# The default model, working size and batch: at 64x64 training is reproducible even with
# concurrent ops; at 128x160 it is not (the gradients of the decoder's upsampling and
# depthwise layers differ in the last bits about one step in four), which is what
# base.deterministic has to prevent. A few steps per epoch keep the run short.
DEFAULT_SIZE = {
    "data": {"synthetic": {"count": 14}},
    "train": {
        "height": 128,
        "width": 160,
        "batch_size": 8,
        "decoder_channels": 32,
        "epochs": 2,
        "steps_per_epoch": 3,
    },
}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_two_runs_from_scratch_agree(tmp_path):
    roots = [make_project(tmp_path / name, DEFAULT_SIZE) for name in ("a", "b")]
    # Both at once: each run is mostly single-threaded graph tracing, so on 2 cores this
    # costs little more than one run.
    procs = [
        subprocess.Popen(
            [dvc_bin(), "repro", "evaluate"],
            cwd=root,
            env=project_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for root in roots
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    a, b = roots

    synthetic = tree_bytes(a / "data/synthetic")
    assert len(synthetic) == 28  # 14 scenes x (rgb, depth)
    assert synthetic == tree_bytes(b / "data/synthetic")
    assert (a / "data/prepared/split.csv").read_bytes() == (
        b / "data/prepared/split.csv"
    ).read_bytes()
    prepared_a, prepared_b = (json.loads((r / "metrics/prepare.json").read_text()) for r in roots)
    assert untimed(prepared_a) == untimed(prepared_b) and prepared_a["sources"]

    train_a, train_b = (json.loads((r / "metrics/train.json").read_text()) for r in roots)
    assert train_a["batch_size"] == 8 and train_a["steps_per_epoch"] == 3
    # Bit-identical training: every loss, every weight.
    for key in ("final_loss", "best_val_si_rmse"):
        assert train_a[key] == train_b[key], key
    weights_a, weights_b = (weight_arrays(r / "models/checkpoints/last.weights.h5") for r in roots)
    assert len(weights_a) > 100 and weights_a.keys() == weights_b.keys()
    differing = [name for name in weights_a if not np.array_equal(weights_a[name], weights_b[name])]
    assert not differing, f"{len(differing)} weight arrays differ, e.g. {differing[:3]}"

    eval_a, eval_b = (json.loads((r / "metrics/evaluate.json").read_text()) for r in roots)
    quality = sorted(set(eval_a) - TIMING_KEYS)
    assert {"si_rmse", "rmse", "rel", "log10", "delta1", "n_images"} <= set(quality)
    assert eval_a["sources"].keys() == eval_b["sources"].keys() == {"synthetic"}
    for key in quality:
        if key == "sources":  # the same figures per source
            for name, figures in eval_a[key].items():
                assert figures == pytest.approx(eval_b[key][name], abs=1e-4), name
        else:
            assert eval_a[key] == pytest.approx(eval_b[key], abs=1e-4), key


SET_DETERMINISM = textwrap.dedent("""
    import sys
    import tensorflow as tf
    from pipeline.model.training import set_determinism
    if sys.argv[1] == "started":
        tf.constant(1.0) + 1.0  # an op has run: the runtime's thread pools exist
    set_determinism(7, sys.argv[1] != "off", log=lambda msg: print("LOG", msg))
    print("INTER_OP", tf.config.threading.get_inter_op_parallelism_threads())
""")


@pytest.mark.parametrize(
    "case, inter_op, warns", [("fresh", 1, False), ("off", 0, False), ("started", 0, True)]
)
def test_deterministic_runs_one_op_at_a_time(case, inter_op, warns):
    proc = subprocess.run(
        [sys.executable, "-c", SET_DETERMINISM, case],
        cwd=REPO,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"INTER_OP {inter_op}" in proc.stdout
    assert ("LOG warning: TensorFlow was started before training" in proc.stdout) == warns, (
        proc.stdout
    )
