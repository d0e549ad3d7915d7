"""train.encoder_weights: a file users have starts the encoder (../shared/encoders: the
keras.applications .h5 and published TFLite classifiers), exactly; a file that does not fit is
one line naming it and the first mismatch; the batch-norm rule and the encoder's learning rate
act where they claim to."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.common import CLASSIFIERS
from conftest import REPO, make_project, project_env, run_stage, split_csv
from pipeline.core.config import TrainConfig, load_params
from pipeline.core.errors import ConfigError, DataError

ENCODERS = REPO.parent / "shared" / "encoders"
H5 = ENCODERS / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
DEEPLAB = ENCODERS / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
IMAGES = ("grace_hopper.bmp", "cat.bmp", "parrot.jpg")


def small_cfg(**kw) -> TrainConfig:
    base = {"arch": "mobile_unet", "height": 64, "width": 96, "decoder_channels": 8}
    return TrainConfig(**{**base, **kw})


def built(cfg: TrainConfig):
    from pipeline.model.networks import build_model
    from pipeline.model.pretrained import encoder_of, start_encoder

    model = build_model(cfg)
    return model, encoder_of(model), start_encoder(model, cfg)


def photo(name: str, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(ENCODERS / "test_images" / name).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize("file", list(CLASSIFIERS))
def test_a_classifier_built_from_a_tflite_file_gives_its_top1(file):
    """The loader end to end: the file's encoder in Keras plus the file's own head classify the
    three test photos as the TFLite itself does (same top-1, probabilities that agree)."""
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.model.pretrained import classifier
    from pipeline.model.weight_files import tflite_input, tflite_logits

    path = ENCODERS / file
    kind, width = CLASSIFIERS[file]
    size = int(Interpreter(model_path=str(path)).get_input_details()[0]["shape"][1])
    model = classifier(str(path), kind, width, size)
    for image in IMAGES:
        q, real = tflite_input(str(path), photo(image, size))
        logits = np.asarray(model(real)).reshape(-1)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        theirs = tflite_logits(str(path), q)  # the TFLite's softmax
        assert int(np.argmax(probs)) == int(np.argmax(theirs)), (file, image)
        assert np.corrcoef(probs, theirs)[0, 1] > 0.9, (file, image)


def test_encoder_weights_equal_the_file_and_differ_from_a_fresh_start():
    import h5py

    from pipeline.model.weight_files import read_tflite

    cfg = small_cfg(encoder="mobilenet_v2", width_multiplier=1.0, encoder_weights=str(H5))
    _, encoder, start = built(cfg)
    with h5py.File(H5) as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        want = [np.asarray(f[n][w]) for n in names for w in f[n].attrs["weight_names"]]
    got = encoder.get_weights()
    assert len(got) == len(want) == 260 and start.sha256 and len(start.loaded) == 104
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    _, fresh, none = built(dataclasses.replace(cfg, encoder_weights="none"))
    assert none is None
    kernels = [i for i, w in enumerate(want) if w.ndim == 4]  # a fresh batch norm is 1, 0 too
    assert not any(np.array_equal(fresh.get_weights()[i], want[i]) for i in kernels)

    # a TFLite file: every conv's kernel is the file's dequantized one, its bias the BN's beta
    path = ENCODERS / "mobilenet_v1_0.5_160_quant.tflite"
    cfg = small_cfg(encoder="mobilenet_v1", width_multiplier=0.5, encoder_weights=str(path))
    _, encoder, start = built(cfg)
    convs = [lay for lay in encoder.layers if type(lay).__name__ in ("Conv2D", "DepthwiseConv2D")]
    items, _ = read_tflite(path)
    assert len(convs) == 27 and len(items) == 28  # + the classifier's logits conv
    for conv, item in zip(convs, items):
        np.testing.assert_array_equal(conv.get_weights()[0], item.kernel)
        norm = encoder.get_layer(f"{conv.name}_bn")
        np.testing.assert_array_equal(norm.beta.numpy(), item.bias)
        np.testing.assert_array_equal(norm.gamma.numpy(), np.ones_like(item.bias))


@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
def test_deeplab_encoder_computes_what_the_deeplab_file_does():
    """DeepLab's MobileNetV2 x0.5 (channels not rounded to 8: mobilenet_v2_deeplab): its
    features at stride 16 match the TFLite's own intermediate tensor on a real photo."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.model.networks.encoders import deeplab_mobilenet_v2
    from pipeline.model.pretrained import load_encoder
    from pipeline.model.weight_files import tflite_input

    interpreter = Interpreter(model_path=str(DEEPLAB), experimental_preserve_all_tensors=True)
    size = int(interpreter.get_input_details()[0]["shape"][1])  # 513: odd sizes pad as TF does
    q, real = tflite_input(str(DEEPLAB), photo("grace_hopper.bmp", size))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], q)
    interpreter.invoke()
    tensor = next(
        t
        for t in interpreter.get_tensor_details()
        if t["name"] == "MobilenetV2/expanded_conv_12/add"
    )
    scale, zero = tensor["quantization"]
    theirs = (interpreter.get_tensor(tensor["index"]).astype(np.float32) - zero) * scale
    base = deeplab_mobilenet_v2((size, size, 3), 0.5)
    load_encoder(base, str(DEEPLAB), "mobilenet_v2_deeplab x0.5")
    ours = np.asarray(keras.Model(base.input, base.get_layer("block_12_add").output)(real))
    assert ours.shape == theirs.shape == (1, 33, 33, 48)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.98
    # and the keras.applications width 0.5 does not fit it: the message says which encoder does
    with pytest.raises(DataError, match="mobilenet_v2_deeplab"):
        built(small_cfg(encoder="mobilenet_v2", width_multiplier=0.5, encoder_weights=str(DEEPLAB)))


def test_files_that_do_not_fit_are_one_line_naming_the_file(tmp_path):
    import h5py

    v1 = ENCODERS / "mobilenet_v1_0.5_160_quant.tflite"
    cases = {  # (encoder, width, file) -> what the message says
        ("mobilenet_v2", 1.0, v1): "conv 1 of the file (MobilenetV1/MobilenetV1/Conv2d_0",
        ("mobilenet_v1", 0.25, v1): "is conv 3x3x3x16, the encoder's (conv1) conv 3x3x3x8",
        ("mobilenet_v2", 0.35, H5): "layer Conv1 of the file has 3x3x3x32",
        ("mobilenet_v3_small", 1.0, H5): "does not fit mobilenet_v3_small x1.0",
    }
    truncated = tmp_path / "truncated_no_top.h5"  # the .h5 without its last 10 layers
    with h5py.File(H5) as src, h5py.File(truncated, "w") as dst:
        names = list(src.attrs["layer_names"])[:-10]
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["layer_names"] = names
        for name in names:
            src.copy(src[name], dst, name=name.decode() if isinstance(name, bytes) else name)
    cases[("mobilenet_v2", 1.0, truncated)] = (
        "has weights for 97 layers, the encoder 104 (first missing: block_16_expand_BN)"
    )
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00\x01not a model at all" * 10)
    cases[("mobilenet_v2", 1.0, garbage)] = "not a TFLite model (no TFL3 flatbuffer identifier)"
    bad_h5 = tmp_path / "garbage.h5"
    bad_h5.write_bytes(b"not hdf5" * 100)
    cases[("mobilenet_v2", 1.0, bad_h5)] = "not an HDF5 file"
    empty = tmp_path / "empty.tflite"
    empty.touch()
    cases[("mobilenet_v2", 1.0, empty)] = "train.encoder_weights file is empty (0 bytes)"
    cases[("mobilenet_v2", 1.0, tmp_path / "missing.h5")] = "train.encoder_weights file not found"
    cut = tmp_path / "cut.tflite"  # a flatbuffer cut short
    cut.write_bytes(v1.read_bytes()[:4000])
    cases[("mobilenet_v1", 0.5, cut)] = "cannot read the TFLite model"
    for (encoder, width, path), says in cases.items():
        cfg = small_cfg(encoder=encoder, width_multiplier=width, encoder_weights=str(path))
        with pytest.raises(DataError) as err:
            built(cfg)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and says in message, message
        assert "\n" not in message


def test_a_file_that_does_not_fit_stops_the_train_stage_with_one_line(tmp_path):
    """Through `python -m stages.train`, as a user meets it: exit 2, one error line naming the
    file and the first mismatch, no model written."""
    wrong = ENCODERS / "mobilenet_v1_0.5_160_quant.tflite"  # V1 for the default V2 x0.35
    project = make_project(tmp_path / "proj", {"train": {"encoder_weights": str(wrong)}}, git=False)
    write_split(project, ["train", "val"], lambda rng: np.full((48, 64), 2.0))
    proc = run_stage("train", project, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {wrong}: does not fit mobilenet_v2")
    assert not (project / "models/model.keras").exists()


def test_params_check_encoder_weights_before_any_work():
    for value, says in (
        ("weights.bin", "is not one of ['none', 'imagenet', 'PATH.h5', 'PATH.tflite']"),
        ("../x.h5", None),
    ):
        overrides = {"train": {"encoder_weights": value}}
        if says is None:
            assert load_params(REPO / "params.yaml", overrides=overrides).train.encoder_weights
            continue
        with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
            load_params(REPO / "params.yaml", overrides=overrides)
    for overrides, says in (
        ({"arch": "mai_baseline_unet", "encoder_weights": "imagenet"}, "has no encoder"),
        ({"encoder_weights": str(H5), "init_from": "models/pre.keras"}, "train.init_from"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_params(REPO / "params.yaml", overrides={"train": overrides})


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def room_batches(count: int = 16, height: int = 64, width: int = 96) -> list[np.ndarray]:
    """Real photographs (the shared rooms) at working size, 0..255."""
    from PIL import Image

    rooms = sorted((REPO.parent / "shared/data/places365_rooms_unlabeled/rgb").glob("*"))[:count]
    images = [
        np.asarray(Image.open(p).convert("RGB").resize((width, height)), np.float32) for p in rooms
    ]
    return [np.stack(images[i : i + 8]) for i in range(0, len(images), 8)]


def test_batchnorm_rules_after_a_folded_file():
    """The trap the issue measured: with the file's folded batch norms (statistics 0 and 1), a
    batch norm in training mode normalizes by the batch's own statistics and the encoder's
    output no longer resembles the pretrained network's. `refit` keeps inference mode exact and
    brings training mode to it; `frozen` runs the loaded ones in inference mode; `trainable`
    leaves them as a fresh network's."""
    from pipeline.model.networks.encoders import encoder_input
    from pipeline.model.pretrained import encoder_of

    path = ENCODERS / "mobilenet_v1_0.5_160_quant.tflite"
    cfg = small_cfg(encoder="mobilenet_v1", width_multiplier=0.5, encoder_weights=str(path))
    batches = room_batches()
    rgb = encoder_input("mobilenet_v1", batches[0])
    outputs = {}
    for rule in ("trainable", "frozen", "refit"):
        from pipeline.model.networks import build_model
        from pipeline.model.pretrained import start_encoder

        model = build_model(dataclasses.replace(cfg, encoder_batchnorm=rule))
        start_encoder(model, dataclasses.replace(cfg, encoder_batchnorm=rule), lambda: batches)
        encoder = encoder_of(model)
        outputs[rule] = [[np.asarray(x) for x in encoder(rgb, training=t)] for t in (False, True)]
        norms = [lay for lay in encoder.layers if type(lay).__name__ == "BatchNormalization"]
        assert len(norms) == 27
        assert all(n.trainable == (rule != "frozen") for n in norms), rule
    pretrained = outputs["trainable"][0]  # inference mode: the file's own function, per stride
    for stride in range(5):  # the same function in inference mode, up to float32 round-off
        assert correlation(outputs["refit"][0][stride], pretrained[stride]) > 0.9999
        np.testing.assert_array_equal(outputs["frozen"][1][stride], pretrained[stride])
    # training mode, by stride 2..32: near the pretrained features after a refit (the deepest
    # map is 2x3 here: its batch statistics are those of few values), far from them without
    near = [correlation(outputs["refit"][1][k], pretrained[k]) for k in range(4)]
    assert min(near) > 0.95, near
    assert correlation(outputs["refit"][1][4], pretrained[4]) > 0.8
    assert correlation(outputs["trainable"][1][4], pretrained[4]) < 0.3  # the trap


def test_encoder_lr_scale_scales_the_pretrained_encoders_steps_only():
    """AdamW's first step moves each weight by about the learning rate (m / sqrt(v) = +-1): with
    train.encoder_lr_scale 0.1 the encoder's weights move a tenth as far as with 1, the
    decoder's as far."""
    import keras

    from pipeline.core.config import LossConfig
    from pipeline.model.losses import make_loss
    from pipeline.model.pretrained import encoder_of
    from pipeline.model.training import make_optimizer

    path = ENCODERS / "mobilenet_v1_0.25_128_quant.tflite"
    rgb = room_batches(8)[0]
    depth = np.random.default_rng(0).uniform(1, 5, (8, 64, 96, 1)).astype(np.float32)
    moved = {}
    for scale in (1.0, 0.1):
        cfg = small_cfg(
            encoder="mobilenet_v1",
            width_multiplier=0.25,
            encoder_weights=str(path),
            encoder_lr_scale=scale,
            weight_decay=0.0,
        )
        keras.utils.set_random_seed(1)
        model, encoder, _ = built(cfg)
        scaled = encoder.trainable_variables if scale != 1 else ()
        model.compile(optimizer=make_optimizer(cfg, 1e-3, scaled), loss=make_loss(LossConfig()))
        enc_before = [v.numpy().copy() for v in encoder.trainable_variables]
        dec = [v for v in model.trainable_variables if all(v is not e for e in encoder.weights)]
        dec_before = [v.numpy().copy() for v in dec]
        model.train_on_batch(rgb, depth)
        step = lambda now, before: np.median(  # noqa: E731
            np.concatenate([np.abs(n.numpy() - b).ravel() for n, b in zip(now, before)])
        )
        moved[scale] = (
            step(encoder_of(model).trainable_variables, enc_before),
            step(dec, dec_before),
        )
    assert moved[0.1][0] == pytest.approx(0.1 * moved[1.0][0], rel=0.05)
    assert moved[0.1][1] == pytest.approx(moved[1.0][1], rel=0.05)


def write_split(project: Path, splits: list[str], depth) -> None:
    """data/prepared/split.csv over len(splits) random photos under the synthetic source's
    folder (where the split of that source must point), each with depth(rng) in metres."""
    from pipeline.core.files import write_depth_png, write_rgb_png

    rng = np.random.default_rng(0)
    rows = []
    for k, split in enumerate(splits):
        name = f"{k}.png"
        rgb, dep = f"data/synthetic/rgb/{name}", f"data/synthetic/depth/{name}"
        write_rgb_png(project / rgb, rng.integers(0, 255, (48, 64, 3), np.uint8))
        write_depth_png(project / dep, depth(rng))
        rows.append((name, split, rgb, dep))
    (project / "data/prepared").mkdir(parents=True)
    (project / "data/prepared/split.csv").write_text(split_csv(rows, source="synthetic"))


def tiny_split_project(root, train_overrides: dict):
    """A project whose split is 4 random train pairs and 2 val pairs, for the train stage."""
    overrides = {"train": {"height": 64, "width": 96, "steps_per_epoch": 2, **train_overrides}}
    project = make_project(root, overrides, git=False)
    write_split(project, ["train"] * 4 + ["val"] * 2, lambda rng: rng.uniform(1, 4, (48, 64)))
    return project


def test_the_train_stage_starts_the_encoder_from_the_file_by_the_rule(tmp_path):
    """Through `python -m stages.train`: frozen batch norms end training with the file's
    values, refitted ones with the training images' statistics (gamma = their std); a tiny
    encoder_lr_scale keeps the encoder's kernels near the file's; metrics/train.json names the
    file and its digest. (The trainable rule: test_batchnorm_rules_after_a_folded_file.)"""
    import hashlib

    import keras

    from pipeline.model.pretrained import encoder_of
    from pipeline.model.weight_files import read_tflite

    path = ENCODERS / "mobilenet_v1_0.25_128_quant.tflite"
    items, _ = read_tflite(path)
    pretrained = {"encoder": "mobilenet_v1", "width_multiplier": 0.25, "encoder_weights": str(path)}
    moved = {}
    for rule, scale in (("frozen", 1e-3), ("refit", 1.0)):
        project = tiny_split_project(
            tmp_path / rule, {**pretrained, "encoder_batchnorm": rule, "encoder_lr_scale": scale}
        )
        run_stage("train", project)
        model = keras.saving.load_model(project / "models/model.keras", compile=False)
        encoder = encoder_of(model)
        bn = encoder.get_layer("conv_pw_13_bn")
        kernel = encoder.get_layer("conv_pw_13").get_weights()[0]
        moved[rule] = (
            np.abs(bn.gamma.numpy() - 1).max(),
            np.abs(bn.beta.numpy() - items[26].bias).max(),
            np.abs(kernel - items[26].kernel).max(),
        )
        summary = json.loads((project / "metrics/train.json").read_text())["encoder"]
        assert summary["file"] == path.name and summary["layers_loaded"] == 54
        assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert moved["frozen"][:2] == (0.0, 0.0)  # inference mode, not trained
    assert moved["refit"][0] > 1e-2 and moved["refit"][1] > 1e-2  # gamma = the std, beta + mean
    assert moved["frozen"][2] < 0.01 * moved["refit"][2]  # lr x0.001


README_OFFLINE = (
    "make exp PRESET=presets/pretrained.yaml",
    "dvc exp run -S train.encoder=mobilenet_v1 -S train.width_multiplier=0.5 "
    "-S train.encoder_weights=../shared/encoders/mobilenet_v1_0.5_160_quant.tflite",
)


def test_readme_offline_commands_start_the_encoder_from_the_shared_files(tmp_path):
    """The README's two commands as a user types them, in a git copy of the project with
    ../shared beside it and no internet: each trains (up to the train stage, a few images,
    one short epoch) with its encoder started from the shared file it names."""
    import hashlib
    import os

    from conftest import dvc_bin, require_program

    readme = (REPO / "README.md").read_text()
    assert all(command in readme for command in README_OFFLINE)  # what a user copies
    make = require_program("make", "apt-get install make")
    (tmp_path / "shared").symlink_to(ENCODERS.parent)  # ../shared, as beside a clone
    project = make_project(tmp_path / "project")
    shutil.copy(REPO / "Makefile", project / "Makefile")
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this venv
    env = {**project_env(), "KERAS_HOME": str(tmp_path / "empty-keras-home")}  # no cache
    quick = "-S data.max_images=3 -S train.epochs=1 -S train.steps_per_epoch=1"
    preset, command = README_OFFLINE
    runs = {
        "preset": [make, *preset.split()[1:], f"EXP_ARGS=train {quick}", "INSTALLED="],
        "command": [dvc_bin(), *command.split()[1:], *quick.split(), "train"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(
            cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        start = json.loads((project / "metrics/train.json").read_text())["encoder"]
        file = ENCODERS / "mobilenet_v1_0.5_160_quant.tflite"
        assert start["file"] == file.name and start["layers_loaded"] == 54, (name, start)
        assert start["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert not os.path.exists(tmp_path / "empty-keras-home" / "models")  # nothing downloaded


def test_refit_takes_images_from_the_whole_train_split():
    """The refit's 64 images are spread over the train split (the training scene and the
    unlabeled photographs after it alike), not its first 64 rows."""
    import tensorflow as tf

    from pipeline.model.training import refit_images

    class Numbered:  # image i is filled with the value i
        n = 200

        def get(self, i):
            value = tf.cast(i, tf.uint8)
            return tf.fill([48, 64, 3], value), tf.zeros([48, 64, 1], tf.uint16)

    batches = refit_images(Numbered(), small_cfg())
    seen = np.concatenate([np.asarray(b)[:, 0, 0, 0] for b in batches]).round().astype(int)
    assert len(seen) == 64 and seen[0] == 0 and seen[-1] == 199
    assert np.all(np.diff(seen) >= 3)  # every third image or so, not a block
