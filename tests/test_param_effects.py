"""Settings that act. A param that is validated, logged and tracked but changes nothing makes
an MLflow comparison a lie, so every key of params.yaml names the test that observes its effect
on an output of the code that acts (a tensor, a file, a metric, a log line; not the param
echoed back), or says in one line why it has none (EFFECTS and EXEMPT below; a key in
neither fails here). Below the table, the tests that were missing: first the wirings of
training that a deliberate-bug check found unobserved (issue #28), each through the real
`train()` on a few tiny images, then the rest, each where its param acts."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_layout import generic_key, params_schema

from conftest import REPO
from pipeline.core.config import load_params, merge
from pipeline.core.files import write_depth_png, write_rgb_png
from pipeline.core.overrides import flatten
from pipeline.data.dataset import write_split, write_teacher_index

HERE = "tests/test_param_effects.py"
# Key of params.yaml (an entry of a name mapping as *) -> the test that observes its effect.
EFFECTS = {
    "base.seed": f"{HERE}::test_synthesize_follows_its_params",
    "base.deterministic": "tests/test_determinism.py::test_deterministic_runs_one_op_at_a_time",
    "data.sources.*.path": (
        "tests/test_sources.py::test_two_real_sources_of_different_sizes_through_dvc_repro"
    ),
    "data.sources.*.weight": (
        f"{HERE}::test_source_weights_set_each_sources_share_of_the_drawn_epochs"
    ),
    "data.unlabeled.*.path": (
        "tests/test_teacher.py::test_repro_with_pipeline_made_teachers_reruns_only_the_student"
    ),
    "data.unlabeled.*.weight": (
        f"{HERE}::test_unlabeled_weights_set_their_share_of_the_drawn_epochs"
    ),
    "data.val": f"{HERE}::test_a_held_out_source_ships_the_last_epoch_not_the_best_on_it",
    "data.val_fraction": (
        "tests/test_sources.py::test_split_blocks_per_source_and_a_held_out_source"
    ),
    "data.aspect": f"{HERE}::test_crop_and_stretch_are_told_apart_in_both_axes",
    "data.max_images": (
        "tests/test_sources.py::test_two_real_sources_of_different_sizes_through_dvc_repro"
    ),
    "data.skip_empty_depth": (
        "tests/test_bad_data.py::test_empty_depth_is_an_error_when_not_skipped"
    ),
    "data.synthetic.count": f"{HERE}::test_synthesize_follows_its_params",
    "data.synthetic.height": f"{HERE}::test_synthesize_follows_its_params",
    "data.synthetic.width": f"{HERE}::test_synthesize_follows_its_params",
    "data.synthetic.invalid_fraction": f"{HERE}::test_synthesize_follows_its_params",
    "train.arch": (
        "tests/test_models_losses.py::test_mai_baseline_unet_is_the_organizers_model_exactly"
    ),
    "train.encoder": f"{HERE}::test_network_params_shape_the_network",
    "train.encoder_weights": (
        "tests/test_pretrained.py::test_the_train_stage_starts_the_encoder_from_the_file_by_the_rule"
    ),
    "train.encoder_batchnorm": (
        "tests/test_pretrained.py::test_the_train_stage_starts_the_encoder_from_the_file_by_the_rule"
    ),
    "train.encoder_lr_scale": (
        "tests/test_pretrained.py::test_the_train_stage_starts_the_encoder_from_the_file_by_the_rule"
    ),
    "train.init_from": "tests/test_sources.py::test_init_from_copies_every_weight",
    "train.width_multiplier": f"{HERE}::test_network_params_shape_the_network",
    "train.decoder_channels": f"{HERE}::test_network_params_shape_the_network",
    "train.height": f"{HERE}::test_network_params_shape_the_network",
    "train.width": f"{HERE}::test_network_params_shape_the_network",
    "train.min_depth": f"{HERE}::test_network_params_shape_the_network",
    "train.max_depth": f"{HERE}::test_network_params_shape_the_network",
    "train.epochs": "tests/test_training.py::test_learning_rate_warms_up_then_decays",
    "train.batch_size": f"{HERE}::test_source_weights_set_each_sources_share_of_the_drawn_epochs",
    "train.learning_rate": "tests/test_training.py::test_learning_rate_warms_up_then_decays",
    "train.weight_decay": f"{HERE}::test_weight_decay_shrinks_the_weights_of_trainings_optimizer",
    "train.warmup_epochs": "tests/test_training.py::test_learning_rate_warms_up_then_decays",
    "train.min_lr_ratio": "tests/test_training.py::test_learning_rate_warms_up_then_decays",
    "train.ema": "tests/test_training.py::test_weight_average_is_shipped_and_resumes_exactly",
    "train.steps_per_epoch": (
        f"{HERE}::test_source_weights_set_each_sources_share_of_the_drawn_epochs"
    ),
    "train.cache_max_mb": "tests/test_input_pipeline.py::test_train_and_val_share_one_cache_budget",
    "train.strategy": "tests/test_training.py::test_mirrored_strategy_on_two_cpu_devices",
    "train.mixed_precision": (
        f"{HERE}::test_layers_compute_in_the_mixed_precision_policy_during_training"
    ),
    "train.loss.silog_weight": "tests/test_models_losses.py::test_loss_weights_combine_terms",
    "train.loss.silog_lambda": (
        f"{HERE}::test_silog_lambda_and_berhu_weight_reach_the_training_loss"
    ),
    "train.loss.grad_weight": "tests/test_models_losses.py::test_loss_weights_combine_terms",
    "train.loss.l1_weight": "tests/test_models_losses.py::test_loss_weights_combine_terms",
    "train.loss.berhu_weight": (
        f"{HERE}::test_silog_lambda_and_berhu_weight_reach_the_training_loss"
    ),
    "train.loss.rmse_weight": (
        "tests/test_models_losses.py::test_rmse_loss_is_the_per_image_rmse_of_valid_pixels"
    ),
    "train.loss.distill_weight": "tests/test_teacher.py::test_distill_and_fill_invalid_losses",
    "train.loss.distill_grad_weight": (
        "tests/test_teacher.py::test_distill_and_fill_invalid_losses"
    ),
    "train.augment.flip": (
        "tests/test_input_pipeline.py::test_augmentation_keeps_rgb_and_depth_aligned"
    ),
    "train.augment.brightness": (
        f"{HERE}::test_each_colour_jitter_does_its_own_change_within_its_bound"
    ),
    "train.augment.contrast": (
        f"{HERE}::test_each_colour_jitter_does_its_own_change_within_its_bound"
    ),
    "train.augment.saturation": (
        f"{HERE}::test_each_colour_jitter_does_its_own_change_within_its_bound"
    ),
    "train.augment.hue": f"{HERE}::test_each_colour_jitter_does_its_own_change_within_its_bound",
    "train.augment.crop_min_scale": (
        f"{HERE}::test_crop_prob_and_crop_min_scale_set_how_often_and_how_far_it_zooms"
    ),
    "train.augment.crop_prob": (
        f"{HERE}::test_crop_prob_and_crop_min_scale_set_how_often_and_how_far_it_zooms"
    ),
    "teacher.model": (
        "tests/test_teacher.py::test_repro_with_pipeline_made_teachers_reruns_only_the_student"
    ),
    "teacher.output": "tests/test_teacher.py::"
    "test_alignment_recovers_scale_and_shift_of_an_onnx_inverse_depth_teacher",
    "teacher.output_index": (
        "tests/test_teacher.py::test_a_wrong_output_index_is_one_line_that_lists_the_outputs"
    ),
    "teacher.height": (
        "tests/test_teacher.py::test_onnx_teacher_with_a_dynamic_size_runs_at_the_params_size"
    ),
    "teacher.width": (
        "tests/test_teacher.py::test_onnx_teacher_with_a_dynamic_size_runs_at_the_params_size"
    ),
    "teacher.normalize": (
        "tests/test_teacher.py::test_onnx_teacher_with_a_dynamic_size_runs_at_the_params_size"
    ),
    "teacher.max_residual": f"{HERE}::test_max_residual_decides_which_teacher_maps_are_kept",
    "teacher.fill_invalid": f"{HERE}::test_fill_invalid_sets_the_loss_that_fit_minimises",
    "export.precision": "tests/test_tflite.py::test_quantized_models_are_smaller",
    "export.height": "tests/test_tflite.py::test_export_model_report_on_real_images",
    "export.width": "tests/test_tflite.py::test_export_model_report_on_real_images",
    "export.representative_images": "tests/test_tflite.py::test_export_model_report_on_real_images",
    "export.parity_images": "tests/test_tflite.py::test_export_model_report_on_real_images",
    "export.max_parity_drop": (
        "tests/test_tflite.py::test_export_fails_when_tflite_scores_worse_than_keras"
    ),
    "export.target_runtime": (
        "tests/test_tflite.py::test_export_fails_when_the_model_needs_a_newer_runtime"
    ),
    "export.output_resize": (
        "tests/test_models_losses.py::test_device_graph_computes_what_training_computed"
    ),
    "benchmark.threads": "tests/test_benchmark.py::test_threads_are_capped_and_reported",
    "benchmark.warmup": f"{HERE}::test_warmup_runs_untimed_invokes_before_the_timed_ones",
    "benchmark.runs": "tests/test_benchmark.py::test_benchmark_stage_writes_metrics",
    "benchmark.device": "tests/test_remote_ssh.py::test_benchmark_stage_over_ssh_with_env_config",
    "benchmark.ssh_python": "tests/test_remote_ssh.py::test_missing_python_on_host",
    "evaluate.panels": (
        "tests/test_end_to_end.py::test_evaluate_param_change_reruns_evaluate_without_training"
    ),
    "package.inputs": "tests/test_predict_package.py::test_package_stage_with_odd_sized_inputs",
    "package.extra_data": "tests/test_teacher.py::test_extra_data_follows_what_trained_the_model",
    "package.challenge_sources": (
        "tests/test_teacher.py::test_extra_data_follows_what_trained_the_model"
    ),
    "package.description": (
        "tests/test_predict_package.py::test_package_stage_with_odd_sized_inputs"
    ),
    "track.force": (
        "tests/test_tracking.py::test_track_stage_logs_once_per_pipeline_state_unless_forced"
    ),
}
# Keys with no effect a test could observe, and why.
EXEMPT = {
    "track.experiment": "only names the MLflow experiment that the runs are logged to",
    "train.jit_compile": (
        "XLA compiles the same train step: the speed changes, not what it computes"
    ),
}


def params_keys(params_file: Path) -> set[str]:
    """The leaf keys of a params file and of the params' schema, entries of a name mapping
    (data.sources.NAME) as *."""
    kinds = params_schema()
    listed = {generic_key(k, kinds) for k in flatten(yaml.safe_load(params_file.read_text()))}
    schema = {k for k, kind in kinds.items() if kind == "leaf"}
    # an empty mapping (data.unlabeled: {}) is no leaf: its entries' keys come from the schema
    return {k for k in listed if kinds.get(k, "leaf") == "leaf"} | schema


def unaccounted(params_file: Path) -> list[str]:
    return sorted(params_keys(params_file) - set(EFFECTS) - set(EXEMPT))


def test_every_param_has_a_test_of_its_effect_or_a_reason():
    missing = unaccounted(REPO / "params.yaml")
    assert not missing, (
        "params that no test shows acting: add each to EFFECTS in tests/test_param_effects.py "
        "with the test that observes its effect (write one), or to EXEMPT with why:\n  "
        + "\n  ".join(missing)
    )


def test_every_mapped_test_exists_and_every_key_is_a_param():
    tests = {}  # file -> the names of its functions
    for path in {target.split("::")[0] for target in EFFECTS.values()}:
        source = (REPO / path).read_text() if (REPO / path).is_file() else ""
        tests[path] = {
            node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
        }
    absent = [
        f"{key} -> {target}"
        for key, target in EFFECTS.items()
        if target.split("::")[1] not in tests[target.split("::")[0]]
    ]
    assert not absent, "mapped to a test that does not exist:\n" + "\n".join(absent)
    keys = params_keys(REPO / "params.yaml")
    assert not (set(EFFECTS) | set(EXEMPT)) - keys, "no longer params"
    assert not set(EFFECTS) & set(EXEMPT), "both tested and exempt"


def test_a_key_added_to_a_copy_of_params_yaml_is_caught(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["dummy"] = 1
    raw["data"]["sources"]["tum"] = {"path": "tum", "weight": 2.0, "colour": "blue"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert unaccounted(tmp_path / "params.yaml") == ["data.sources.*.colour", "train.dummy"]


DEVICE = (48, 64)  # export.height/width: the device geometry every image is brought to first
TINY = {
    "data": {"sources": {"a": {"path": "a"}}},  # not read: the split file lists the pairs
    # the organizers' plain U-Net at 8 base filters: its step traces 5x faster than a MobileNet's
    "train": {
        "arch": "mai_baseline_unet",
        "width_multiplier": 0.125,
        "height": 32,
        "width": 32,
        "batch_size": 2,
        "epochs": 1,
        "steps_per_epoch": 1,
    },
    "export": {"height": DEVICE[0], "width": DEVICE[1]},
}


def tiny_params(overrides: dict | None = None):
    return load_params(REPO / "params.yaml", overrides=merge(TINY, overrides or {}))


def two_sources(sources: dict | None = None, **data) -> dict:
    """data params with sources a and b (paths not read: the split file lists the pairs)."""
    return {"data": {"sources": sources or {"a": {"path": "a"}, "b": {"path": "b"}}, **data}}


def pair(folder: Path, name: str, depth_m, *, source: str, split: str, seed: int = 0) -> dict:
    """A random RGB and `depth_m` (a number or an HxW map, 0 = invalid): one split.csv row."""
    depth = np.broadcast_to(np.asarray(depth_m, dtype=np.float64), DEVICE)
    rgb = np.random.default_rng(seed).integers(0, 256, (*depth.shape, 3), dtype=np.uint8)
    write_rgb_png(folder / "rgb" / name, rgb)
    write_depth_png(folder / "depth" / name, depth)
    return {
        "name": name,
        "split": split,
        "source": source,
        "rgb": str(folder / "rgb" / name),
        "depth": str(folder / "depth" / name),
    }


class Captured(Exception):
    """Raised by a spy once it holds what training built: the rest of the run is not needed."""


def spy(monkeypatch, name: str, into: dict) -> None:
    """pipeline.model.training.NAME records what it returns inside train(), then stops it."""
    from pipeline.model import training

    real = getattr(training, name)

    def record(*args, **kwargs):
        into[name] = real(*args, **kwargs)
        raise Captured(name)

    monkeypatch.setattr(training, name, record)


def fit(tmp: Path, params, rows: list[dict], *, teacher_rows=None, callbacks=()) -> dict:
    """The real train() on `rows` (a split.csv); returns its summary."""
    from pipeline.model.training import train

    write_split(tmp / "split.csv", rows)
    teacher_csv = None
    if teacher_rows is not None:
        teacher_csv = tmp / "alignment.csv"
        write_teacher_index(teacher_csv, teacher_rows)
    return train(
        params,
        split_csv=tmp / "split.csv",
        model_out=tmp / "model.keras",
        ckpt_dir=tmp / "ckpt",
        history_csv=tmp / "history.csv",
        fingerprint="test",
        teacher_csv=teacher_csv,
        extra_callbacks=list(callbacks),
        log=lambda line: None,
    )


# ------------------------------------------------------------- teacher.fill_invalid
def test_fill_invalid_sets_the_loss_that_fit_minimises(tmp_path):
    """Ground truth with a hole where the teacher has depth, trained with fill_invalid on and
    off: the loss each fit used fills the hole from the teacher or leaves it out (checked on a
    batch of its own), and the epoch losses fit reports differ, everything else being alike."""
    import keras
    import tensorflow as tf

    from pipeline.model.losses import make_loss

    class LossOfFit(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.loss = self.model.loss

    holed = np.full(DEVICE, 2.0)
    holed[:, : DEVICE[1] // 2] = 0.0  # the left half has no ground truth
    teacher_map = np.linspace(1.0, 8.0, DEVICE[1])[None].repeat(DEVICE[0], 0)
    rows = [pair(tmp_path, f"{i}.png", holed, source="a", split="train", seed=i) for i in range(2)]
    rows.append(pair(tmp_path, "v.png", 2.0, source="a", split="val", seed=9))
    teacher_rows = []
    for row in rows[:2]:
        write_depth_png(tmp_path / "teacher" / row["name"], teacher_map)
        teacher_rows.append(
            {
                "source": "a",
                "name": row["name"],
                "kind": "labelled",
                "rgb": row["rgb"],
                "teacher": str(tmp_path / "teacher" / row["name"]),
            }
        )
    used, epoch_loss = {}, {}
    for fill in (True, False):
        params = tiny_params({"teacher": {"model": "models/teacher/t.onnx", "fill_invalid": fill}})
        seen = LossOfFit()
        run = tmp_path / f"fill_{fill}"
        run.mkdir()
        epoch_loss[fill] = fit(run, params, rows, teacher_rows=teacher_rows, callbacks=[seen])[
            "final_loss"
        ]
        used[fill] = seen.loss

    gt = np.where(np.arange(8)[:, None] < 4, 0.0, 2.0) * np.ones((2, 8, 8))
    y = tf.constant(
        np.stack([gt, np.full_like(gt, 5.0)], -1), tf.float32
    )  # [ground truth, teacher]
    pred = tf.constant(np.random.default_rng(2).uniform(1.0, 4.0, (2, 8, 8, 1)), tf.float32)
    want = {f: float(make_loss(params.train.loss, fill_invalid=f)(y, pred)) for f in (True, False)}
    assert abs(want[True] - want[False]) > 0.01  # the hole matters for this batch
    assert {f: float(used[f](y, pred)) for f in (True, False)} == pytest.approx(want, rel=1e-6)
    assert abs(epoch_loss[True] - epoch_loss[False]) > 1e-3, epoch_loss


# ------------------------------------------------------------- data.sources.NAME.weight
def test_source_weights_set_each_sources_share_of_the_drawn_epochs(tmp_path, monkeypatch):
    """Sources a and b of two images each, weights 1:3: of the images the training input
    draws over two epochs, 3/4 come from b (equal weights would give exactly 1/2)."""
    import tensorflow as tf

    rows = [
        pair(tmp_path / name, f"{i}.png", depth, source=name, split="train", seed=i)
        for name, depth in (("a", 1.0), ("b", 3.0))
        for i in range(2)
    ]
    rows.append(pair(tmp_path / "a", "v.png", 1.0, source="a", split="val"))
    params = tiny_params(
        {
            **two_sources({"a": {"path": "a", "weight": 1.0}, "b": {"path": "b", "weight": 3.0}}),
            "train": {"epochs": 2, "steps_per_epoch": 100, "batch_size": 4},
        }
    )
    built = {}
    spy(monkeypatch, "train_dataset", built)
    with pytest.raises(Captured):
        fit(tmp_path, params, rows)
    depths = [
        float(tf.reduce_max(d)) for _, batch in built["train_dataset"] for d in batch
    ]  # metres
    assert len(depths) == 2 * 100 * 4 and set(np.round(depths, 3)) == {1.0, 3.0}
    per_epoch = np.reshape(np.isclose(depths, 3.0), (2, -1)).mean(axis=1)
    assert per_epoch == pytest.approx([0.75, 0.75], abs=0.06), per_epoch  # binomial sd 0.022 each
    assert np.mean(per_epoch) == pytest.approx(0.75, abs=0.04)


# ------------------------------------------------------------- data.val: a held-out source
def script_val_scores(monkeypatch, scores: list[float]) -> None:
    """Each epoch's validation metric (training.MONITOR) is the next of `scores`, whatever
    the weights: the epoch choice is then the same on every CPU."""
    from pipeline.model import training

    left = iter(scores)
    real_end = training.ValidationMetrics.on_epoch_end

    def scripted(self, epoch, logs=None):
        real_end(self, epoch, logs)
        logs[training.MONITOR] = next(left)

    monkeypatch.setattr(training.ValidationMetrics, "on_epoch_end", scripted)


def shipped_epochs(tmp_path: Path, params, rows) -> tuple[dict, list[bool]]:
    """fit's summary and, per epoch, whether the model it saved has that epoch's weights."""
    import keras

    class Weights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.by_epoch = []

        def on_epoch_end(self, epoch, logs=None):
            self.by_epoch.append([w.copy() for w in self.model.get_weights()])

    weights = Weights()
    summary = fit(tmp_path, params, rows, callbacks=[weights])
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False).get_weights()
    same = [all(np.array_equal(a, b) for a, b in zip(model, epoch)) for epoch in weights.by_epoch]
    return summary, same


def test_a_held_out_source_ships_the_last_epoch_not_the_best_on_it(tmp_path, monkeypatch):
    """Validation on the held-out source b scores 0.3, 0.1, 0.2: the model shipped is the last
    epoch's, not epoch 2's (choosing on b would flatter the very figure reported for b)."""
    import csv

    from pipeline.model import training

    script_val_scores(monkeypatch, [0.3, 0.1, 0.2])
    rows = [
        pair(tmp_path / "a", f"{i}.png", 1.0 + i, source="a", split="train", seed=i)
        for i in range(2)
    ]
    rows.append(pair(tmp_path / "b", "v.png", 2.0, source="b", split="val", seed=5))
    params = tiny_params({**two_sources(val="b"), "train": {"epochs": 3, "learning_rate": 0.05}})
    summary, same = shipped_epochs(tmp_path, params, rows)
    with open(tmp_path / "history.csv") as f:  # what the selection saw: epoch 2 was the best
        assert [float(r[training.MONITOR]) for r in csv.DictReader(f)] == [0.3, 0.1, 0.2]
    assert summary["best_epoch"] == 3
    assert same == [False, False, True]


# ------------------------------------------------------------- train.mixed_precision
@pytest.mark.parametrize(
    "policy, compute",
    [("float32", "float32"), ("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")],
)
def test_layers_compute_in_the_mixed_precision_policy_during_training(tmp_path, policy, compute):
    """While fit runs, every convolution computes in the policy's dtype and the depth head in
    float32; the weights stay float32 either way."""
    import keras

    class Dtypes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            layers = self.model._flatten_layers(include_self=False, recursive=True)
            convs = [
                layer
                for layer in layers
                if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            ]
            self.body = {
                layer.compute_dtype for layer in convs if not layer.name.startswith("depth")
            }
            self.head = {layer.compute_dtype for layer in layers if layer.name.startswith("depth")}
            self.weights = {w.dtype for w in self.model.weights}

    rows = [
        pair(tmp_path, f"{i}.png", 1.0 + i, source="a", split="train", seed=i) for i in range(2)
    ]
    rows.append(pair(tmp_path, "v.png", 2.0, source="a", split="val", seed=5))
    seen = Dtypes()
    fit(tmp_path, tiny_params({"train": {"mixed_precision": policy}}), rows, callbacks=[seen])
    assert (seen.body, seen.head, seen.weights) == ({compute}, {"float32"}, {"float32"})


# ------------------------------------------------------------- data.aspect
def coordinates(folder: Path, name: str, h: int, w: int, *, split: str) -> dict:
    """RGB whose red is the pixel's column and green its row, exactly; depth encodes both
    (1 m + 100 mm per row + 1 mm per column), so any crop or resize shows where it took from."""
    y, x = np.mgrid[0:h, 0:w]
    write_rgb_png(folder / "rgb" / name, np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))
    write_depth_png(folder / "depth" / name, (1000 + 100 * y + x) / 1000.0)
    return {
        "name": name,
        "split": split,
        "source": "a",
        "rgb": str(folder / "rgb" / name),
        "depth": str(folder / "depth" / name),
    }


@pytest.mark.parametrize("aspect", ["crop", "stretch"])
def test_crop_and_stretch_are_told_apart_in_both_axes(tmp_path, monkeypatch, aspect):
    """A 2:1 image and a 2:3 one, brought to the 4:3 device geometry by training's data: crop
    keeps the centre (from column 16 of the wide one, row 24 of the tall one, one to one),
    stretch keeps the whole frame (from column 0 and row 0). Positions are checked within one
    pixel, against offsets of 16 and 24, in both axes, in RGB and in depth."""
    rows = [
        coordinates(tmp_path, "wide.png", 48, 96, split="train"),
        coordinates(tmp_path, "tall.png", 96, 64, split="train"),
        coordinates(tmp_path, "wide.png", 48, 96, split="val"),
    ]
    built = {}
    spy(monkeypatch, "split_sources", built)
    with pytest.raises(Captured):
        fit(tmp_path, tiny_params({"data": {"aspect": aspect}}), rows)
    train, val = built["split_sources"]
    j, i = np.arange(DEVICE[1]), np.arange(DEVICE[0])
    # where each output column / row comes from in the source image
    expect = {
        "crop": {"wide": (16 + j, i), "tall": (j, 24 + i)},
        "stretch": {"wide": ((j + 0.5) * 96 / 64 - 0.5, i), "tall": (j, (i + 0.5) * 96 / 48 - 0.5)},
    }
    for source, index, name in ((train, 0, "wide"), (train, 1, "tall"), (val, 0, "wide")):
        rgb, depth = (np.asarray(t, dtype=np.float64) for t in source.get(index))
        want_x, want_y = expect[aspect][name]
        assert rgb.shape == (*DEVICE, 3) and depth.shape == (*DEVICE, 1)
        assert np.abs(rgb[..., 0] - want_x[None, :]).max() <= 1.0, (name, rgb[0, :3, 0])
        assert np.abs(rgb[..., 1] - want_y[:, None]).max() <= 1.0, (name, rgb[:3, 0, 1])
        row, col = np.divmod(depth[..., 0] - 1000, 100)  # what depth says, pixel by pixel
        assert np.abs(col - rgb[..., 0]).max() <= 1.0 and np.abs(row - rgb[..., 1]).max() <= 1.0


def test_unlabeled_weights_set_their_share_of_the_drawn_epochs(tmp_path, monkeypatch):
    """An unlabeled folder u of weight 3 next to source a of weight 1, two images each: 3/4 of
    the drawn images are u's (their teacher maps read 3 m, a's 1 m)."""
    import tensorflow as tf

    rows = [
        pair(tmp_path / "a", f"{i}.png", 1.0, source="a", split="train", seed=i) for i in range(2)
    ]
    rows.append(pair(tmp_path / "a", "v.png", 1.0, source="a", split="val"))
    maps = []
    for i, (kind, source, metres) in enumerate(
        [("labelled", "a", 1.0)] * 2 + [("unlabeled", "u", 3.0)] * 2
    ):
        rgb = rows[i]["rgb"] if kind == "labelled" else str(tmp_path / "u" / "rgb" / f"{i}.png")
        if kind == "unlabeled":
            write_rgb_png(rgb, np.zeros((*DEVICE, 3), np.uint8))
        write_depth_png(tmp_path / "maps" / f"{i}.png", np.full(DEVICE, metres))
        maps.append(
            {
                "source": source,
                "name": f"{i}.png",
                "kind": kind,
                "rgb": rgb,
                "teacher": str(tmp_path / "maps" / f"{i}.png"),
            }
        )
    params = tiny_params(
        {
            "data": {
                "sources": {"a": {"path": "a", "weight": 1.0}},
                "unlabeled": {"u": {"path": "u", "weight": 3.0}},
            },
            "teacher": {"model": "models/teacher/t.onnx"},
            "train": {"epochs": 2, "steps_per_epoch": 100, "batch_size": 4},
        }
    )
    built = {}
    spy(monkeypatch, "train_dataset", built)
    with pytest.raises(Captured):
        fit(tmp_path, params, rows, teacher_rows=maps)
    teacher = [
        float(tf.reduce_max(d[..., 1])) for _, batch in built["train_dataset"] for d in batch
    ]
    assert len(teacher) == 800 and set(np.round(teacher, 3)) == {1.0, 3.0}
    assert np.mean(np.isclose(teacher, 3.0)) == pytest.approx(0.75, abs=0.04)


# ------------------------------------------------------------- the rest, where each acts
def test_synthesize_follows_its_params(tmp_path, monkeypatch):
    """base.seed draws other scenes; data.synthetic.count, height and width give that many
    images of that size; invalid_fraction knocks out that share of the depth, nothing else."""
    from pipeline.core.cli import run_stage
    from pipeline.core.files import read_depth_m, read_rgb
    from stages import synthesize

    base = {
        "base": {"seed": 1},
        "data": {"synthetic": {"count": 2, "height": 32, "width": 40, "invalid_fraction": 0.0}},
    }
    variants = {
        "base": {},
        "seed": {"base": {"seed": 2}},
        "size": {"data": {"synthetic": {"count": 3, "height": 48, "width": 32}}},
        "holes": {"data": {"synthetic": {"invalid_fraction": 0.3}}},
    }
    out = {}
    for name, change in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        raw = merge(yaml.safe_load((REPO / "params.yaml").read_text()), merge(base, change))
        (folder / "params.yaml").write_text(yaml.safe_dump(raw))
        monkeypatch.chdir(folder)
        assert run_stage(synthesize.main, []) == 0
        names = sorted(p.name for p in (folder / "data/synthetic/rgb").iterdir())
        out[name] = {
            n: (
                read_rgb(folder / "data/synthetic/rgb" / n),
                read_depth_m(folder / "data/synthetic/depth" / n),
            )
            for n in names
        }
    assert len(out["base"]) == 2 and len(out["size"]) == 3
    assert {rgb.shape for rgb, _ in out["base"].values()} == {(32, 40, 3)}
    assert {depth.shape for _, depth in out["size"].values()} == {(48, 32)}
    for n, (rgb, depth) in out["base"].items():
        assert not np.array_equal(rgb, out["seed"][n][0])  # another seed, another scene
        holed = out["holes"][n][1]
        assert np.mean(holed == 0) - np.mean(depth == 0) == pytest.approx(0.3, abs=0.02)
        kept = holed > 0
        np.testing.assert_array_equal(holed[kept], depth[kept])


def drawn(rgb: np.ndarray, augment, depth_m=None, steps: int = 50):
    """Every image the training input draws from this one pair (200 draws, one epoch), at the
    pair's own size: (rgb 0..255, depth metres), float64."""
    import tempfile

    from pipeline.data.tfdata import PairSource, train_dataset

    h, w = rgb.shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        write_rgb_png(Path(tmp) / "rgb.png", rgb)
        write_depth_png(
            Path(tmp) / "depth.png", np.full((h, w), 2.0) if depth_m is None else depth_m
        )
        source = PairSource(
            [str(Path(tmp) / "rgb.png")],
            [str(Path(tmp) / "depth.png")],
            cache_max_mb=1,
            size=(h, w),
        )
        batches = [
            (r.numpy(), d.numpy())
            for r, d in train_dataset(
                source,
                seed=11,
                first_epoch=0,
                epochs=1,
                steps_per_epoch=steps,
                batch_size=4,
                height=h,
                width=w,
                augment_cfg=augment,
            )
        ]
    return (
        np.concatenate([r for r, _ in batches]).astype(np.float64),
        np.concatenate([d for _, d in batches]).astype(np.float64),
    )


NEUTRAL = dict(
    flip=False,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    crop_min_scale=1.0,
    crop_prob=0.0,
)


def colourful(h: int = 24, w: int = 32) -> np.ndarray:
    """Mid-range colours (so no jitter below clips) and a grey top row (no hue, no saturation)."""
    rgb = np.random.default_rng(3).integers(64, 193, (h, w, 3))
    rgb[0] = rgb[0, :, :1]
    return rgb.astype(np.uint8)


@pytest.mark.parametrize(
    "key, value", [("brightness", 0.2), ("contrast", 0.3), ("saturation", 0.4), ("hue", 0.05)]
)
def test_each_colour_jitter_does_its_own_change_within_its_bound(key, value):
    """One jitter at a time against none: brightness adds one offset per image, within
    +-value x 255; contrast scales each channel about its mean by 1 +- value; saturation scales
    each pixel's distance from its brightest channel by 1 +- value, grey stays grey; hue turns
    every colour by one angle of at most value turns, keeping brightest channel and chroma.
    Depth is never touched. Each changes some image by more than a tenth of its bound."""
    import dataclasses

    import tensorflow as tf

    from pipeline.core.config import AugmentConfig

    plain = AugmentConfig(**NEUTRAL)
    (x0, d0), (x, d) = (
        drawn(colourful(), plain),
        drawn(colourful(), dataclasses.replace(plain, **{key: value})),
    )
    np.testing.assert_array_equal(d, d0)
    assert np.abs(x - x0).max() > 1.0  # it acts
    if key == "brightness":
        offset = (x - x0).mean(axis=(1, 2, 3))
        assert np.abs(x - x0 - offset[:, None, None, None]).max() < 0.05
        assert np.abs(offset).max() <= value * 255 + 0.05 and np.abs(offset).max() > value * 25.5
    elif key == "contrast":
        mean = x0.mean(axis=(1, 2), keepdims=True)
        factor = ((x - mean) * (x0 - mean)).sum(axis=(1, 2)) / ((x0 - mean) ** 2).sum(axis=(1, 2))
        assert np.abs(x - mean - factor[:, None, None, :] * (x0 - mean)).max() < 0.1
        assert np.all(np.abs(factor - 1) <= value + 1e-4) and np.abs(factor - 1).max() > value / 10
    else:
        top0, top = x0.max(axis=-1), x.max(axis=-1)
        np.testing.assert_allclose(top, top0, atol=0.05)  # the brightest channel (HSV value) stays
        np.testing.assert_allclose(x[:, 0], x0[:, 0], atol=0.05)  # grey stays grey
        chroma0, chroma = top0 - x0.min(axis=-1), top - x.min(axis=-1)
        if key == "saturation":
            factor = chroma[:, 1:] / chroma0[:, 1:]
            assert np.ptp(factor, axis=(1, 2)).max() < 0.01  # one factor per image
            assert (
                np.all(np.abs(factor - 1) <= value + 1e-3) and np.abs(factor - 1).max() > value / 10
            )
        else:
            np.testing.assert_allclose(chroma, chroma0, atol=0.1)
            hue0, hue = (tf.image.rgb_to_hsv(v[:, 1:] / 255.0).numpy()[..., 0] for v in (x0, x))
            turn = (hue - hue0 + 0.5) % 1.0 - 0.5
            assert np.ptp(turn, axis=(1, 2)).max() < 0.005  # one angle per image
            assert np.abs(turn).max() <= value + 0.002 and np.abs(turn).max() > value / 10


def test_crop_prob_and_crop_min_scale_set_how_often_and_how_far_it_zooms():
    """Of 200 draws of an image whose red channel is its column, crop_prob 0.3 crops about
    30% (those keep fewer than all columns); crop_min_scale 0.8 keeps between 80% and all of
    the width, and nearly 80% at the least."""
    import dataclasses

    from pipeline.core.config import AugmentConfig

    h, w = 24, 64
    columns = np.broadcast_to(np.arange(w)[None, :, None] * 4, (h, w, 3)).astype(np.uint8)
    plain = AugmentConfig(**NEUTRAL)
    rgb, _ = drawn(columns, dataclasses.replace(plain, crop_prob=0.3, crop_min_scale=0.5))
    kept = (rgb[..., 0].max(axis=(1, 2)) - rgb[..., 0].min(axis=(1, 2))) / 4 / (w - 1)
    assert np.mean(kept < 0.97) == pytest.approx(0.3, abs=0.1)
    rgb, _ = drawn(columns, dataclasses.replace(plain, crop_prob=1.0, crop_min_scale=0.8))
    kept = (rgb[..., 0].max(axis=(1, 2)) - rgb[..., 0].min(axis=(1, 2))) / 4 / (w - 1)
    assert kept.min() >= 0.8 - 2 / w and kept.min() < 0.83 and kept.max() <= 1.0


def test_weight_decay_shrinks_the_weights_of_trainings_optimizer(tmp_path, monkeypatch):
    """The optimizer train() compiles into the model, given a zero gradient, shrinks a weight by
    learning_rate x weight_decay per step (AdamW's decoupled decay), and not at all at 0."""
    import keras

    rows = [
        pair(tmp_path, f"{i}.png", 1.0 + i, source="a", split="train", seed=i) for i in range(2)
    ]
    rows.append(pair(tmp_path, "v.png", 2.0, source="a", split="val", seed=5))
    after = {}
    for decay in (0.0, 0.5):
        compiled = {}

        def capture(self, optimizer=None, _into=compiled, **kwargs):
            _into["optimizer"] = optimizer
            raise Captured("compile")

        monkeypatch.setattr(keras.Model, "compile", capture)
        params = tiny_params(
            {"train": {"weight_decay": decay, "learning_rate": 0.01, "warmup_epochs": 0.0}}
        )
        with pytest.raises(Captured):
            fit(tmp_path, params, rows)
        weight = keras.Variable(np.full(3, 2.0, np.float32))
        compiled["optimizer"].apply_gradients([(keras.ops.zeros(3), weight)])
        after[decay] = keras.ops.convert_to_numpy(weight)
    np.testing.assert_allclose(after[0.0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(after[0.5], 2.0 * (1 - 0.01 * 0.5), rtol=1e-6)


def test_silog_lambda_and_berhu_weight_reach_the_training_loss():
    """make_loss (given train.loss whole by train()) uses silog_lambda as the silog term's
    lambda and adds berhu_weight x the BerHu term."""
    import tensorflow as tf

    from pipeline.core.config import LossConfig
    from pipeline.model.losses import berhu_loss, make_loss, silog_loss

    rng = np.random.default_rng(4)
    gt = rng.uniform(0.5, 5.0, (2, 8, 8, 1)).astype(np.float32)
    gt[:, :2] = 0.0
    pred = rng.uniform(0.5, 5.0, (2, 8, 8, 1)).astype(np.float32)
    gt, pred = tf.constant(gt), tf.constant(pred)
    for lam in (0.0, 1.0):
        loss = make_loss(LossConfig(silog_lambda=lam, grad_weight=0.0))
        assert float(loss(gt, pred)) == pytest.approx(
            float(silog_loss(gt, pred, lam=lam)), rel=1e-6
        )
    assert float(silog_loss(gt, pred, lam=0.0)) != pytest.approx(
        float(silog_loss(gt, pred, lam=1.0)), rel=1e-3
    )
    both = make_loss(LossConfig(grad_weight=0.0, berhu_weight=0.7))
    want = float(silog_loss(gt, pred, lam=0.85)) + 0.7 * float(berhu_loss(gt, pred))
    assert (
        float(both(gt, pred)) == pytest.approx(want, rel=1e-6) and float(berhu_loss(gt, pred)) > 0.1
    )


def test_max_residual_decides_which_teacher_maps_are_kept(tmp_path):
    """The same teacher maps (ONNX inverse depth, two good scenes and one it cannot match)
    under three thresholds: a map is kept exactly when its residual is within max_residual."""
    from test_teacher import onnx_teacher, scene

    from pipeline.core.config import TeacherConfig
    from pipeline.teacher.labels import run_teacher

    model = onnx_teacher(tmp_path / "inv.onnx")
    labelled = [scene(tmp_path / "src", f"{i}.png", i) for i in range(2)]
    labelled.append(scene(tmp_path / "src", "wrong.png", 9, wrong=True))
    kept, residuals = {}, None
    for threshold in (1e-4, 0.1, 5.0):
        cfg = TeacherConfig(
            model=str(model), output="inverse_relative", normalize="unit", max_residual=threshold
        )
        out = tmp_path / f"maps_{threshold}"
        rows = run_teacher(cfg, labelled=labelled, unlabeled=[], write_dir=out, final_dir=str(out))
        residuals = residuals or [float(r["residual"]) for r in rows]
        assert [float(r["residual"]) for r in rows] == residuals  # the threshold moves no residual
        kept[threshold] = [int(r["kept"]) for r in rows]
        assert [bool(r["teacher"]) for r in rows] == [bool(k) for k in kept[threshold]]
    assert residuals[0] > 1e-4 and max(residuals[:2]) < 0.1 < residuals[2] < 5.0, residuals
    assert kept == {1e-4: [0, 0, 0], 0.1: [1, 1, 0], 5.0: [1, 1, 1]}


@pytest.fixture(scope="module")
def networks():
    """The tiny networks below, each built once: name -> model."""
    from pipeline.core.config import TrainConfig
    from pipeline.model.networks import build_model

    mobile = dict(
        arch="mobile_unet", height=32, width=32, decoder_channels=8, width_multiplier=0.35
    )
    baseline = dict(arch="mai_baseline_unet", height=32, width=64, width_multiplier=0.125)
    configs = {
        "v2": mobile,
        "v3_small": {**mobile, "encoder": "mobilenet_v3_small"},
        "other": {**mobile, "decoder_channels": 16, "min_depth": 0.5, "max_depth": 2.0},
        "baseline": baseline,
        "baseline_wide": {**baseline, "width_multiplier": 0.25, "height": 64, "width": 32},
    }
    return {name: build_model(TrainConfig(**cfg)) for name, cfg in configs.items()}


def test_network_params_shape_the_network(networks):
    """encoder: the backbone (MobileNetV3's squeeze-excite multiplies, none in V2);
    decoder_channels: the decoder's widths; width_multiplier: the U-Net's base filters;
    height/width: the input and output size; min/max_depth: the depth head's range (its
    logits driven to either end give exactly min_depth and max_depth)."""
    import keras

    def encoder(model):
        return next(layer for layer in model.layers if isinstance(layer, keras.Model))

    def multiplies(model):
        return sum(isinstance(layer, keras.layers.Multiply) for layer in encoder(model).layers)

    assert multiplies(networks["v2"]) == 0 < multiplies(networks["v3_small"])
    assert [
        networks[n].get_layer(f"dec{s}_pw_conv").filters for n in ("v2", "other") for s in (16, 2)
    ] == [32, 8, 64, 16]
    first = [
        next(
            layer for layer in networks[n].layers if isinstance(layer, keras.layers.Conv2D)
        ).filters
        for n in ("baseline", "baseline_wide")
    ]
    assert first == [8, 16]
    assert [
        (networks[n].input_shape, networks[n].output_shape) for n in ("baseline", "baseline_wide")
    ] == [((None, 32, 64, 3), (None, 32, 64, 1)), ((None, 64, 32, 3), (None, 64, 32, 1))]
    for name, (lo, hi) in (("v2", (0.1, 40.0)), ("other", (0.5, 2.0))):
        model = networks[name]
        logits = model.get_layer("depth_logits")
        kernel, bias = logits.get_weights()
        ends = []
        for b in (-50.0, 50.0):
            logits.set_weights([np.zeros_like(kernel), np.full_like(bias, b)])
            ends.append(model(np.zeros((1, 32, 32, 3), np.float32)).numpy())
        logits.set_weights([kernel, bias])
        assert [float(e.min()) for e in ends] == pytest.approx([lo, hi], rel=1e-5)
        assert [float(e.max()) for e in ends] == pytest.approx([lo, hi], rel=1e-5)


def test_warmup_runs_untimed_invokes_before_the_timed_ones():
    """benchmark.warmup invokes the interpreter that many times before the benchmark.runs
    timed ones; the first warm-up's time is reported as first_run_ms (none without warm-up)."""
    from pipeline.device.tflite_runner import _timed_invokes

    class Interpreter:
        calls = 0

        def invoke(self):
            self.calls += 1

    for warmup, runs in ((0, 3), (2, 3)):
        interp = Interpreter()
        first_ms, times = _timed_invokes(interp, warmup, runs)
        assert (interp.calls, len(times), first_ms is None) == (warmup + runs, runs, warmup == 0)
