"""train.mixed_precision: a mixed policy trains with a finite loss, the saved model is
float32, and its TFLite export is float32 and within the export parity bound, also of the
model as it computed in training (mixed). `auto` without a GPU trains in float32 with a note."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import make_project, run_stage

# The stage-level run takes the GPU policy (with loss scaling); mixed_bfloat16 (CPUs) is
# checked in-process below: on a CPU without bfloat16 units it is emulated, slow to train.
POLICIES = ("mixed_float16",)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The tiny project with its data indexed and split, shared by the policies below."""
    project = make_project(tmp_path_factory.mktemp("mixed") / "project", git=False)
    for stage in ("synthesize", "index", "prepare"):
        run_stage(stage, project)
    return project


def _set_policy(project: Path, policy: str) -> None:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(mixed_precision=policy, epochs=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_trains_and_exports_float32_within_parity(prepared, policy, monkeypatch):
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.core.config import load_params
    from pipeline.core.metrics import image_metrics
    from pipeline.data.dataset import read_split
    from pipeline.device.export import load_rgb_batch
    from pipeline.model.networks import build_model
    from pipeline.model.training import dtype_policy

    _set_policy(prepared, policy)
    proc = run_stage("train", prepared)
    assert f", {policy}" in proc.stdout  # the train log line names the policy it trained in
    history = (prepared / "reports/history.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in history]
    assert len(losses) == 1 and all(math.isfinite(x) for x in losses), losses

    core = keras.saving.load_model(prepared / "models/model.keras", compile=False)
    assert core.dtype_policy.name == "float32"
    assert {layer.dtype_policy.name for layer in core._flatten_layers(include_self=False)} == {
        "float32"
    }
    assert {w.dtype for w in core.weights} == {"float32"}

    run_stage("export", prepared)
    report = json.loads((prepared / "metrics/export.json").read_text())
    params = load_params(prepared / "params.yaml")
    assert report["precision"] == "fp32"
    assert report["parity"]["si_rmse_diff"] <= params.export.max_parity_drop
    tensor_types = {
        d["dtype"]
        for d in Interpreter(model_path=str(prepared / "models/model.tflite")).get_tensor_details()
    }
    assert tensor_types <= {np.float32, np.int32}, (
        tensor_types
    )  # no float16 or bfloat16 in the graph

    # The model as training ran it (mixed compute, float32 head) against the float32 export's
    # core: within the same bound as the export's own parity.
    with dtype_policy(policy):
        mixed = build_model(params.train)
    mixed.set_weights(core.get_weights())
    assert mixed.layers[1].compute_dtype != "float32" and mixed.output.dtype == "float32"
    monkeypatch.chdir(prepared)
    val = read_split("data/prepared/split.csv", "val")
    images = load_rgb_batch(
        [r["rgb"] for r in val], height=params.train.height, width=params.train.width
    )
    ref, got = (
        np.asarray(core(images, training=False))[..., 0],
        np.asarray(mixed(images, training=False))[..., 0],
    )
    drift = np.mean([image_metrics(pred=g, gt=r)["si_rmse"] for g, r in zip(got, ref)])
    assert 0 < drift <= params.export.max_parity_drop, drift  # > 0: it really computed in 16 bits


def test_auto_is_mixed_float16_on_a_gpu_else_float32_with_a_note():
    import tensorflow as tf

    from pipeline.model.training import training_policy

    gpu = bool(tf.config.list_physical_devices("GPU"))
    notes = []
    assert training_policy("auto", log=notes.append) == ("mixed_float16" if gpu else "float32")
    assert len(notes) == (0 if gpu else 1) and all("\n" not in n and "no GPU" in n for n in notes)
    notes.clear()
    assert training_policy("mixed_bfloat16", log=notes.append) == "mixed_bfloat16" and not notes


def test_mixed_bfloat16_trains_a_step_with_a_float32_head_and_loss():
    import keras

    from pipeline.core.config import TrainConfig
    from pipeline.model.losses import make_loss
    from pipeline.model.networks import build_model
    from pipeline.model.training import dtype_policy

    cfg = TrainConfig(height=64, width=96)
    keras.utils.set_random_seed(0)
    with dtype_policy("mixed_bfloat16"):
        model = build_model(cfg)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=make_loss(cfg.loss))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the build
    assert model.layers[1].compute_dtype == "bfloat16" and model.output.dtype == "float32"
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    depth = rng.uniform(0.5, 5.0, (2, 64, 96, 1)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    loss = float(model.train_on_batch(images, depth))
    assert math.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # it stepped
    assert {w.dtype for w in model.weights} == {"float32"}  # weights stay float32
