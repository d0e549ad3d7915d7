"""Several data sources of any size, cross-scene validation, and starting from other weights."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (
    REPO,
    SHARED_DATA,
    dvc_bin,
    make_project,
    project_env,
    run,
    run_stage,
    split_csv,
)
from pipeline.core.config import ConfigError, load_params
from pipeline.core.errors import DataError
from pipeline.core.files import write_depth_png, write_rgb_png
from pipeline.data.dataset import aspect_crop_box, build_split

HOLOLENS = SHARED_DATA.parent / "hololens2_office"  # 540x360, another sensor and scene


def coordinate_pair(folder: Path, name: str, h: int, w: int) -> None:
    """RGB whose R/G channels and depth all encode the pixel's relative position."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full((h, w), 128)], -1).astype(
        np.uint8
    )
    write_rgb_png(folder / "rgb" / name, rgb)
    write_depth_png(folder / "depth" / name, 1.0 + 4.0 * x / (w - 1))  # metres grow left to right


# ------------------------------------------------------------- params
def test_sources_params_and_the_migration_message(tmp_path):
    p = load_params(
        REPO / "params.yaml",
        overrides={
            "data": {
                "sources": {"tum": {"path": "a"}, "holo": {"path": "b", "weight": 2.0}},
                "val": "holo",
            }
        },
    )
    assert list(p.data.sources) == ["tum", "holo"] and p.data.sources["holo"].weight == 2.0
    assert p.data.sources["tum"].weight == 1.0
    old = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["data"]["sources"]
    raw["data"]["source"] = "../shared/data/tum_fr1_xyz"
    old.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ConfigError, match=r"data.source is now data.sources.*\+data.sources.NAME.path=FOLDER"
    ):
        load_params(old)
    for data, needle in (
        ({"val": "nowhere"}, "data.val='nowhere' is not 'blocks' or one of data.sources"),
        ({"val": "synthetic"}, "holds out the only source"),
        ({"sources": {"x": {"weight": 1.0}}}, "data.sources.x.path is missing"),
        ({"sources": {"x y": {"path": "p"}}}, "not a valid name"),
        (
            {"sources": {"x": {"path": "p", "weight": 0.0}}},
            "data.sources.x.weight=0.0 is out of range",
        ),
    ):
        with pytest.raises(ConfigError, match=needle):
            load_params(REPO / "params.yaml", overrides={"data": data})


def test_a_preset_replaces_the_sources_and_its_experiment_says_so():
    p = load_params(REPO / "params.yaml", presets=[REPO / "presets/tum.yaml"])
    assert list(p.data.sources) == ["tum"]
    out = subprocess.run(
        [sys.executable, "-m", "stages.exp", "--print", "presets/tum.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("dvc exp run -S '~data.sources.synthetic' -S ")
    assert out.endswith(" -S +data.sources.tum.path=../shared/data/tum_fr1_xyz\n")


# ------------------------------------------------------------- split over sources
def test_split_blocks_per_source_and_a_held_out_source(tmp_path):
    for name, n, (h, w) in (("a", 5, (30, 40)), ("b", 4, (36, 54))):
        for i in range(n):
            coordinate_pair(tmp_path / name, f"{i:03d}.png", h, w)
    sources = {"a": tmp_path / "a", "b": tmp_path / "b"}
    rows = build_split(sources, val_fraction=0.25)
    assert [(r["source"], r["name"], r["split"]) for r in rows] == [
        ("a", "000.png", "train"),
        ("a", "001.png", "train"),
        ("a", "002.png", "train"),
        ("a", "003.png", "val"),
        ("a", "004.png", "val"),
        ("b", "000.png", "train"),
        ("b", "001.png", "train"),
        ("b", "002.png", "train"),
        ("b", "003.png", "val"),
    ]
    assert {(r["width"], r["height"]) for r in rows} == {(40, 30), (54, 36)}
    held = build_split(sources, val="b")
    assert {r["source"] for r in held if r["split"] == "val"} == {"b"}
    assert {r["source"] for r in held if r["split"] == "train"} == {"a"}
    # the digest follows the bytes: rewriting one image changes exactly its row
    coordinate_pair(tmp_path / "b", "001.png", 36, 50)
    changed = [
        r["name"] for r, s in zip(build_split(sources, val="b"), held) if r["digest"] != s["digest"]
    ]
    assert changed == ["001.png"]


# ------------------------------------------------------------- any image size
@pytest.mark.parametrize("aspect", ["crop", "stretch"])
def test_mixed_sizes_reach_the_device_geometry_aligned(tmp_path, aspect):
    """Pairs of three sizes (4:3, 3:2, portrait) in one source: cached and uncached,
    every pair comes out at the device size, and depth still matches the RGB's encoded
    position; crop keeps the centre at the 4:3 aspect, stretch keeps the whole frame."""
    from pipeline.data.tfdata import PairSource

    sizes = [(48, 64), (36, 54), (50, 40)]
    for i, (h, w) in enumerate(sizes):
        coordinate_pair(tmp_path, f"{i}.png", h, w)
    rgb = [str(tmp_path / "rgb" / f"{i}.png") for i in range(3)]
    depth = [str(tmp_path / "depth" / f"{i}.png") for i in range(3)]
    device = (24, 32)
    for budget in (10.0, 0.0):  # in RAM, and decoded per access
        src = PairSource(rgb, depth, cache_max_mb=budget, size=device, aspect=aspect)
        assert src.cached == (budget > 0)
        for i, (h, w) in enumerate(sizes):
            r, d = (np.asarray(t) for t in src.get(i))
            assert r.shape == (*device, 3) and r.dtype == np.uint8 and d.shape == (*device, 1)
            x_rgb = r[..., 0].astype(float) / 255.0  # 0..1 across the kept columns
            x_depth = (
                d[..., 0].astype(float) / 1000.0 - 1.0
            ) / 4.0  # the same position, from depth
            assert np.abs(x_rgb - x_depth).max() < 0.06
            top, left, ch, cw = aspect_crop_box(h, w, *device) if aspect == "crop" else (0, 0, h, w)
            # leftmost and rightmost kept columns: the crop box's edges
            assert x_depth[:, 0].mean() == pytest.approx(left / (w - 1), abs=0.06)
            assert x_depth[:, -1].mean() == pytest.approx((left + cw - 1) / (w - 1), abs=0.06)


def test_weights_draw_a_source_more_often():
    from pipeline.data.tfdata import epoch_order

    weights = [1.0] * 50 + [3.0] * 50
    order = epoch_order(100, seed=1, epoch=0, count=40_000, weights=weights)
    share = np.mean(order >= 50)
    assert share == pytest.approx(0.75, abs=0.01)
    assert np.array_equal(order, epoch_order(100, seed=1, epoch=0, count=40_000, weights=weights))
    plain = epoch_order(10, seed=1, epoch=0, count=10)
    assert sorted(plain) == list(range(10))  # equal weights: one permutation, as before


# ------------------------------------------------------------- transfer
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import keras

    from pipeline.model.networks import build_model

    cfg = load_params(
        REPO / "params.yaml",
        overrides={"train": {"height": 64, "width": 64, "decoder_channels": 8}},
    ).train
    keras.utils.set_random_seed(3)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("init") / "pretrained.keras"
    model.save(path)
    return path, cfg


def test_init_from_copies_every_weight(saved_model):
    import dataclasses

    import keras

    from pipeline.model.networks import build_model
    from pipeline.model.training import init_weights

    path, cfg = saved_model
    keras.utils.set_random_seed(4)
    fresh = build_model(dataclasses.replace(cfg, init_from=str(path)))
    source = keras.saving.load_model(path, compile=False)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.get_weights(), source.get_weights()))
    init_weights(fresh, path)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), source.get_weights()))


def test_init_from_another_architecture_is_a_one_line_error(saved_model, tmp_path):
    import dataclasses

    from pipeline.model.networks import build_model
    from pipeline.model.training import init_weights

    path, cfg = saved_model
    other = build_model(dataclasses.replace(cfg, arch="fastdepth"))
    with pytest.raises(
        DataError, match=r"pretrained.keras: train.init_from is a different architecture"
    ) as err:
        init_weights(other, path)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="train.init_from model not found"):
        init_weights(other, tmp_path / "missing.keras")


@pytest.mark.parametrize(
    "content, needle",
    [(b"", "is empty (0 bytes)"), (b"not a zip", "a .keras file is a zip archive")],
)
def test_an_unreadable_keras_file_is_named_with_what_is_wrong(tmp_path, content, needle):
    """Keras reports any file it cannot open as a zip as "File not found"."""
    from pipeline.model.networks import load_keras_model

    bad = tmp_path / "model.keras"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(needle)) as err:
        load_keras_model(bad, missing="train.init_from model not found")
    assert str(err.value).startswith(f"{bad}: ") and "not found" not in str(err.value)


def test_an_empty_keras_teacher_is_reported_empty_by_the_teacher_stage(tmp_path):
    project = make_project(
        tmp_path / "proj", {"teacher": {"model": "models/teacher/t.keras"}}, git=False
    )
    (project / "models/teacher/t.keras").write_bytes(b"")
    split = project / "data/prepared/split.csv"
    split.parent.mkdir(parents=True)
    coordinate_pair(project / "src", "a.png", 24, 32)
    split.write_text(split_csv([("a.png", "train", "src/rgb/a.png", "src/depth/a.png")]))
    proc = run_stage("teacher", project, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors == ["error: models/teacher/t.keras: the Keras model file is empty (0 bytes)"]


IMAGENET_CHECK = """
import os, sys, numpy as np, keras
from pipeline.core.config import load_params
from pipeline.model.networks import build_model
overrides = {'train': {'encoder_weights': 'imagenet', 'height': 96, 'width': 128}}
cfg = load_params('params.yaml', overrides=overrides).train
# where keras.applications looks first: $KERAS_HOME/models/<file>; a random model of the
# same shape stands in for the real weights (no internet here)
keras.utils.set_random_seed(7)
ref = keras.applications.MobileNetV2(input_shape=(96, 128, 3), include_top=False, weights=None,
                                     alpha=cfg.width_multiplier)
alpha = float(cfg.width_multiplier)
name = f'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5'
os.makedirs(os.path.join(os.environ['KERAS_HOME'], 'models'))
import h5py
from keras.src.legacy.saving import legacy_h5_format
with h5py.File(os.path.join(os.environ['KERAS_HOME'], 'models', name), 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, ref)
keras.utils.set_random_seed(8)
model = build_model(cfg)
encoder = next(l for l in model.layers if l.name.endswith('_encoder'))
got, want = encoder.get_weights(), ref.get_weights()
assert len(got) == len(want) > 100, (len(got), len(want))
assert all(np.array_equal(a, b) for a, b in zip(got, want))
fresh = keras.applications.MobileNetV2(input_shape=(96, 128, 3), include_top=False, weights=None,
                                       alpha=cfg.width_multiplier)
# not equal by chance
assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), want))
print('loaded', len(got))
"""


def test_imagenet_encoder_weights_load_from_the_keras_cache(tmp_path):
    env = {**project_env(), "KERAS_HOME": str(tmp_path / "keras")}
    proc = subprocess.run(
        [sys.executable, "-c", IMAGENET_CHECK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("loaded ")


# ------------------------------------------------------------- end to end
def test_two_real_sources_of_different_sizes_through_dvc_repro(tmp_path):
    """TUM (640x480) + HoloLens (540x360), a few frames each, through the real DVC stages
    to a valid submission, with per-source metrics next to the constant baseline."""
    root = make_project(
        tmp_path / "proj",
        {
            "data": {
                "sources": {
                    "tum": {"path": str(SHARED_DATA)},
                    "holo": {"path": str(HOLOLENS), "weight": 2.0},
                },
                "max_images": 4,
                "val_fraction": 0.25,
            }
        },
    )
    run([dvc_bin(), "repro", "evaluate", "package"], root)
    split = (root / "data/prepared/split.csv").read_text().splitlines()
    assert (
        sum(",tum," in line for line in split) == 4 and sum(",holo," in line for line in split) == 4
    )
    prepared = json.loads((root / "metrics/prepare.json").read_text())
    assert prepared["sources"]["tum"]["sizes"] == ["640x480"] and prepared["sources"]["holo"][
        "sizes"
    ] == ["540x360"]
    evaluated = json.loads((root / "metrics/evaluate.json").read_text())
    for name in ("tum", "holo"):
        m = evaluated["sources"][name]
        assert m["n_images"] == 1 and m["ratio_to_constant"] == pytest.approx(
            m["si_rmse"] / m["baseline_si_rmse"]
        )
    with zipfile.ZipFile(root / "submission/submission.zip") as zf:
        names = zf.namelist()
    assert len([n for n in names if n.endswith(".png")]) == 2 and "model.tflite" in names
    assert not (root / "data/synthetic").exists()  # synthetic is not a source here: not needed
