"""Bad params: a ConfigError naming the key, raised before any stage does work."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_project, run
from pipeline.core.config import ConfigError, TrainConfig, as_flat_dict, load_params

PARAMS = REPO / "params.yaml"


def load_with(overrides: dict):
    return load_params(PARAMS, overrides=overrides)


@pytest.mark.parametrize(
    "overrides, needles",
    [
        # unknown keys, at every depth
        ({"trian": {"epochs": 3}}, ["unknown key trian"]),
        ({"train": {"lossx": 1.0}}, ["unknown key train.lossx"]),
        ({"train": {"loss": {"foo": 1.0}}}, ["unknown key train.loss.foo"]),
        ({"data": {"synthetic": {"cnt": 3}}}, ["unknown key data.synthetic.cnt"]),
        # wrong types
        ({"train": {"epochs": "ten"}}, ["train.epochs must be int", "'ten'"]),
        ({"train": {"epochs": 2.0}}, ["train.epochs must be int"]),
        ({"train": {"epochs": True}}, ["train.epochs must be int"]),
        ({"base": {"seed": 1.5}}, ["base.seed must be int", "1.5"]),
        ({"train": {"augment": {"flip": "yes"}}}, ["train.augment.flip must be bool", "'yes'"]),
        ({"train": {"learning_rate": "fast"}}, ["train.learning_rate must be float"]),
        ({"train": {"learning_rate": float("nan")}}, ["train.learning_rate=nan", "finite"]),
        ({"train": {"max_depth": float("inf")}}, ["train.max_depth=inf", "finite"]),
        ({"train": {"arch": None}}, ["train.arch must be str", "None"]),
        ({"train": 5}, ["train must be a mapping"]),
        # out of range
        ({"train": {"epochs": 0}}, ["train.epochs=0", "must be >= 1"]),
        ({"data": {"val_fraction": 1.5}}, ["data.val_fraction=1.5", "must be <= 0.9"]),
        ({"data": {"val_fraction": 0}}, ["data.val_fraction=0.0", "must be > 0.0"]),
        ({"train": {"height": 100}}, ["train.height=100", "divisible by 32"]),
        (
            {"train": {"arch": "mai_baseline_unet", "width": 168}},
            ["train.width=168", "divisible by 16"],
        ),
        ({"train": {"arch": "unet3000"}}, ["train.arch='unet3000'", "mobile_unet"]),
        (
            {"train": {"width_multiplier": "big"}},
            ["train.width_multiplier must be float or 'auto'", "'big'"],
        ),
        ({"train": {"height": "Auto"}}, ["train.height must be int or 'auto'", "'Auto'"]),
        ({"train": {"width_multiplier": 2.5}}, ["train.width_multiplier=2.5", "must be <= 2.0"]),
        ({"export": {"precision": "int4"}}, ["export.precision='int4'", "int8"]),
        (
            {"export": {"target_runtime": "v2.4"}},
            ["export.target_runtime='v2.4'", "dotted version like 2.4.0"],
        ),
        ({"export": {"target_runtime": 2.4}}, ["export.target_runtime must be str", "2.4"]),
        ({"export": {"output_resize": "nearest"}}, ["export.output_resize='nearest'", "separable"]),
        (
            {"train": {"mixed_precision": "float16"}},
            ["train.mixed_precision='float16'", "mixed_float16"],
        ),
        (
            {"train": {"mixed_precision": False}},
            ["train.mixed_precision must be str", "False"],
        ),  # YAML's `off`
        ({"train": {"jit_compile": "xla"}}, ["train.jit_compile must be bool", "'xla'"]),
        (
            {"train": {"min_depth": 10.0, "max_depth": 10.0}},
            ["train.min_depth=10.0", "train.max_depth=10.0"],
        ),
        ({"train": {"min_depth": 0.0}}, ["train.min_depth=0.0", "must be > 0"]),
        ({"package": {"extra_data": 2}}, ["package.extra_data=2"]),
        # teacher and unlabeled data (README "Learning from a teacher")
        ({"teacher": {"output": "disparity"}}, ["teacher.output='disparity'", "inverse_relative"]),
        ({"teacher": {"normalize": "zscore"}}, ["teacher.normalize='zscore'", "imagenet"]),
        ({"teacher": {"max_residual": 0}}, ["teacher.max_residual=0.0", "must be > 0"]),
        ({"teacher": {"height": -1}}, ["teacher.height=-1", "must be >= 0"]),
        (
            {"teacher": {"model": "models/teacher/t.pt"}},
            ["teacher.model='models/teacher/t.pt'", ".onnx"],
        ),
        (
            {"teacher": {"model": "/tmp/t.onnx"}},
            ["teacher.model='/tmp/t.onnx'", "under models/teacher/"],
        ),
        ({"teacher": {"model": "models/teacher/../t.onnx"}}, ["under models/teacher/"]),
        (
            {"teacher": {"model": "models/teacher/t.onnx", "height": 256}},
            ["teacher.height=256", "set both"],
        ),
        (
            {"train": {"loss": {"distill_weight": 1.0}}},
            ["train.loss.distill_weight needs a teacher", "teacher.model"],
        ),
        (
            {"train": {"loss": {"distill_grad_weight": 0.5}}},
            ["train.loss.distill_grad_weight needs a teacher", "teacher.model"],
        ),
        ({"teacher": {"fill_invalid": True}}, ["teacher.fill_invalid needs a teacher"]),
        ({"data": {"unlabeled": {"extra": {"path": "x"}}}}, ["data.unlabeled needs a teacher"]),
        (
            {"data": {"unlabeled": {"synthetic": {"path": "x"}}}},
            ["data.unlabeled.synthetic", "data.sources"],
        ),
        (
            {"data": {"unlabeled": {"bad name": {"path": "x"}}}},
            ["data.unlabeled.bad name is not a valid name"],
        ),
        ({"data": {"unlabeled": ["x"]}}, ["data.unlabeled must be a mapping"]),
        (
            {"package": {"challenge_sources": "synthetic"}},
            ["package.challenge_sources must be a list of names"],
        ),
        ({"benchmark": {"device": "raspberrypi"}}, ["benchmark.device='raspberrypi'", "ssh://"]),
        (
            {"benchmark": {"device": "ssh://pi@pi4", "ssh_python": "python3; rm -rf ~"}},
            ["benchmark.ssh_python"],
        ),
    ],
)
def test_bad_value_names_the_key(overrides, needles):
    with pytest.raises(ConfigError) as err:
        load_with(overrides)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_valid_params_load():
    p = load_with(
        {
            "train": {"learning_rate": 1, "augment": {"flip": False}},
            "benchmark": {"device": "ssh://pi@pi4:22"},
        }
    )
    assert p.train.learning_rate == 1.0 and isinstance(p.train.learning_rate, float)
    assert p.train.augment.flip is False and p.benchmark.device == "ssh://pi@pi4:22"


def test_teacher_params_load():
    p = load_with(
        {
            "teacher": {
                "model": "models/teacher/t.onnx",
                "output": "inverse_relative",
                "height": 256,
                "width": 320,
            },
            "data": {"unlabeled": {"extra": {"path": "x"}}},
            "package": {"challenge_sources": ["synthetic", "mai"]},
        }
    )
    assert (p.teacher.height, p.data.unlabeled["extra"].path, p.data.unlabeled["extra"].weight) == (
        256,
        "x",
        1.0,
    )
    assert p.package.challenge_sources == ("synthetic", "mai")
    assert load_with({"data": {"unlabeled": None}}).data.unlabeled == {}  # `unlabeled:` left empty


def test_auto_sizes_are_each_archs_own():
    assert {
        yaml.safe_load(PARAMS.read_text())["train"][k]
        for k in ("width_multiplier", "height", "width")
    } == {"auto"}
    default = load_with({}).train
    assert (default.arch, default.width_multiplier, default.height, default.width) == (
        "mobile_unet",
        0.35,
        128,
        160,
    )
    # = dvc exp run -S train.arch=mai_baseline_unet: the organizers' U-Net, 64 base filters at
    # 240x320
    baseline = load_with({"train": {"arch": "mai_baseline_unet"}}).train
    assert (baseline.width_multiplier, baseline.height, baseline.width) == (1.0, 240, 320)
    for arch in ("fastdepth", "litedepth"):
        t = load_with({"train": {"arch": arch}}).train
        assert (t.width_multiplier, t.height, t.width) == (0.35, 128, 160)
    # an explicit value wins over the arch's own, key by key
    mixed = load_with(
        {"train": {"arch": "mai_baseline_unet", "height": 480, "width_multiplier": 0.5}}
    ).train
    assert (mixed.width_multiplier, mixed.height, mixed.width) == (0.5, 480, 320)
    # every TrainConfig holds numbers (MLflow and hashes see them); replace() keeps them
    assert TrainConfig(arch="mai_baseline_unet").height == 240
    assert dataclasses.replace(default, arch="mai_baseline_unet").height == 128
    flat = as_flat_dict(load_with({"train": {"arch": "mai_baseline_unet"}}))
    assert (flat["train.width_multiplier"], flat["train.height"], flat["train.width"]) == (
        1.0,
        240,
        320,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_exponent_floats_as_dvc_writes_them(tmp_path):
    # `dvc exp run -S train.learning_rate=1e-5` writes `learning_rate: 1e-05`, which plain
    # PyYAML (YAML 1.1) reads as a string.
    p = load_params(write(tmp_path, "train:\n  learning_rate: 1e-05\n  weight_decay: 2E+0\n"))
    assert p.train.learning_rate == 1e-5 and p.train.weight_decay == 2.0
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        load_params(write(tmp_path, "train:\n  epochs: 1e2\n"))


def test_yaml_bool_words_are_bools(tmp_path):
    assert (
        load_params(write(tmp_path, "train:\n  augment:\n    flip: no\n")).train.augment.flip
        is False
    )


def test_duplicate_section_is_an_error(tmp_path):
    # A second `train:` block would silently replace the whole first one.
    text = "train:\n  epochs: 3\n  batch_size: 4\ntrain:\n  epochs: 5\n"
    with pytest.raises(ConfigError, match=r"line 4, column 1: duplicate key 'train'"):
        load_params(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train:\n  epochs: 3\n batch_size: 2\n", "line 3, column 2"),
        ("train:\n\tepochs: 3\n", "line 2, column 1: found character '\\t'"),
        ("train: {epochs: 3\n", "line 2"),
        ("- train\n- data\n", "expected sections"),
    ],
)
def test_invalid_yaml_names_file_and_line(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_bad_preset_names_the_preset_key(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown key train.epoch "):
        load_params(PARAMS, presets=[preset])


# ------------------------------------------------ the stages, as subprocesses
STAGES = (
    "check",
    "synthesize",
    "index",
    "unlabeled",
    "prepare",
    "teacher",
    "train",
    "export",
    "benchmark",
    "evaluate",
    "package",
    "track",
)
OUTPUT_DIRS = ("data", "models", "metrics", "reports", "submission")
# Runs a stage as `python -m` would and reports at exit whether TensorFlow was imported.
PROBE = (
    "import atexit, runpy, sys; atexit.register(lambda: print('TF_IMPORTED' if 'tensorflow' in "
    "sys.modules else 'TF_NOT_IMPORTED')); stage = sys.argv.pop(1); runpy.run_module('stages.' + "
    "stage, run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("params") / "proj", git=False)


def run_probe(project: Path, stage: str):
    start = time.time()
    proc = run([sys.executable, "-c", PROBE, stage], project, check=False, timeout=120)
    return proc, time.time() - start


def set_params(project: Path, text: str | None) -> None:
    path = project / "params.yaml"
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)


def assert_stopped_early(project: Path, proc, seconds: float, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "TF_NOT_IMPORTED" in proc.stdout  # params are checked before TensorFlow loads
    assert seconds < 10
    made = [d for d in OUTPUT_DIRS if (project / d).exists()]
    # models/teacher/ (its README) comes with the project; anything else in models/ is an output
    if "models" in made and [p.name for p in (project / "models").iterdir()] == ["teacher"]:
        made.remove("models")
    assert not made


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_rejects_bad_params_before_work(project, stage):
    good = yaml.safe_load((project / "params.yaml").read_text())
    good["train"]["loss"]["foo"] = 1.0
    set_params(project, yaml.safe_dump(good, sort_keys=False))
    proc, seconds = run_probe(project, stage)
    assert_stopped_early(project, proc, seconds, "unknown key train.loss.foo")


def test_train_stage_with_wrong_type(project):
    good = yaml.safe_load((REPO / "params.yaml").read_text())
    good["train"]["epochs"] = "ten"
    set_params(project, yaml.safe_dump(good, sort_keys=False))
    proc, seconds = run_probe(project, "train")
    assert_stopped_early(project, proc, seconds, "train.epochs must be int")


@pytest.mark.parametrize("stage", ["prepare", "train"])
def test_stage_with_invalid_yaml(project, stage):
    set_params(project, "train:\n  epochs: 3\n batch_size: 2\n")
    proc, seconds = run_probe(project, stage)
    assert_stopped_early(project, proc, seconds, "params.yaml: not valid YAML (line 3")


@pytest.mark.parametrize("stage", ["prepare", "train"])
def test_stage_without_params_file(project, stage):
    set_params(project, None)
    proc, seconds = run_probe(project, stage)
    assert_stopped_early(project, proc, seconds, "params.yaml: params file not found")
