"""Teachers: real model files (ONNX built here, TFLite and Keras made by the pipeline), the
alignment of relative inverse depth, the teacher channel in training, Extra Data, and a
`dvc repro` that keeps the teacher's maps when only the student changes."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import dvc_bin, run
from pipeline.core.config import TeacherConfig, load_params
from pipeline.core.errors import DataError
from pipeline.core.files import (
    read_depth_m,
    read_depth_mm,
    read_rgb,
    write_depth_png,
    write_rgb_png,
)
from pipeline.data.dataset import read_teacher_index

# The ONNX teacher below: inverse depth = A * red + B, red in 0..1 (teacher.normalize unit).
A, B = 3.0, 0.5
# The scenes: 1 / depth = INV_NEAR_FAR[0] * red + INV_NEAR_FAR[1],
# i.e. 0.5 m (red 1) to 5 m (red 0).
INV_SLOPE, INV_FAR = 1.8, 0.2
SCALE, SHIFT = INV_SLOPE / A, INV_FAR - INV_SLOPE * B / A  # what the alignment must recover


def onnx_teacher(path, *, height=48, width=64):
    """An ONNX model (N x 3 x H x W float, NCHW like exported PyTorch models) whose output
    is relative inverse depth A * red + B, as N x 1 x H x W. height/width None = dynamic."""
    import onnx
    from onnx import TensorProto, helper

    h, w = height or "h", width or "w"
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["image", "start", "end", "axis"], ["red"]),
            helper.make_node("Mul", ["red", "a"], ["scaled"]),
            helper.make_node("Add", ["scaled", "b"], ["inverse_depth"]),
        ],
        "inverse_depth_teacher",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("inverse_depth", TensorProto.FLOAT, [1, 1, h, w])],
        [
            helper.make_tensor("start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("end", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("a", TensorProto.FLOAT, [], [A]),
            helper.make_tensor("b", TensorProto.FLOAT, [], [B]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def scene(folder, name, seed, *, height=48, width=64, outliers=0.05, wrong=False):
    """An RGB whose red channel encodes the true inverse depth, and its depth PNG with a share
    of outlier pixels (wrong=True: depth unrelated to the image, a map the teacher cannot match)."""
    rng = np.random.default_rng(seed)
    red = np.clip(
        np.linspace(0.05, 0.95, width)[None, :] + rng.uniform(-0.05, 0.05, (height, width)), 0, 1
    )
    rgb = np.stack(
        [np.rint(red * 255), rng.integers(0, 256, (height, width)), np.full((height, width), 90)],
        -1,
    )
    red = rgb[..., 0] / 255.0
    depth = 1.0 / (INV_SLOPE * red + INV_FAR)
    if wrong:
        depth = rng.uniform(0.5, 5.0, depth.shape)
    bad = rng.random(depth.shape) < outliers
    depth[bad] = rng.uniform(0.3, 9.0, int(bad.sum()))
    depth[:2] = 0.0  # invalid rows, like a real sensor
    write_rgb_png(folder / "rgb" / name, rgb.astype(np.uint8))
    write_depth_png(folder / "depth" / name, depth)
    return {
        "source": "src",
        "name": name,
        "rgb": str(folder / "rgb" / name),
        "depth": str(folder / "depth" / name),
    }


def test_alignment_recovers_scale_and_shift_of_an_onnx_inverse_depth_teacher(tmp_path, monkeypatch):
    from pipeline.teacher.labels import run_teacher, summarize

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/teacher").mkdir(parents=True)
    onnx_teacher(tmp_path / "models/teacher/inv.onnx")
    cfg = TeacherConfig(
        model="models/teacher/inv.onnx",
        output="inverse_relative",
        normalize="unit",
        max_residual=0.1,
    )
    labelled = [scene(tmp_path / "src", f"{i}.png", i) for i in range(3)]
    labelled.append(scene(tmp_path / "src", "9_wrong.png", 9, wrong=True))
    unlabeled = [{**scene(tmp_path / "extra", "u.png", 7, outliers=0.0), "source": "extra"}]
    rows = run_teacher(
        cfg, labelled=labelled, unlabeled=unlabeled, write_dir=tmp_path / "out", final_dir="out"
    )

    by_name = {r["name"]: r for r in rows}
    for i in range(3):  # 5 % of every ground truth is wrong; the fit does not bend to it
        row = by_name[f"{i}.png"]
        assert float(row["scale"]) == pytest.approx(SCALE, rel=2e-3)
        assert float(row["shift"]) == pytest.approx(SHIFT, abs=1e-3)
        assert row["kept"] == 1 and float(row["residual"]) < 0.1
    assert by_name["9_wrong.png"]["kept"] == 0 and by_name["9_wrong.png"]["teacher"] == ""
    assert float(by_name["9_wrong.png"]["residual"]) > 0.1
    stats = summarize(rows, cfg)
    assert (stats["dropped"], stats["labelled_images"], stats["unlabeled_images"]) == (1, 4, 1)
    # the unlabeled image takes the median of the kept fits: its map is its true depth
    u = by_name["u.png"]
    assert (
        u["kind"] == "unlabeled"
        and u["residual"] == ""
        and float(u["scale"]) == pytest.approx(SCALE, rel=2e-3)
    )
    truth, teacher = (
        read_depth_m(tmp_path / "extra/depth/u.png"),
        read_depth_m(tmp_path / "out/extra/depth/u.png"),
    )
    valid = truth > 0
    assert np.abs(teacher[valid] - truth[valid]).max() < 0.01  # metres, mm rounding and fit error
    assert (
        u["teacher"] == "out/extra/depth/u.png"
        and read_depth_mm(tmp_path / u["teacher"]).dtype == np.uint16
    )


def test_onnx_teacher_with_a_dynamic_size_runs_at_the_params_size(tmp_path):
    from pipeline.teacher.model import TeacherModel

    path = onnx_teacher(tmp_path / "dyn.onnx", height=None, width=None)
    with pytest.raises(
        DataError, match=r"dyn.onnx: the model's input size is not fixed.*set teacher.height"
    ):
        TeacherModel(TeacherConfig(model=str(path), output="inverse_relative", normalize="unit"))
    model = TeacherModel(
        TeacherConfig(
            model=str(path), output="inverse_relative", normalize="unit", height=24, width=32
        )
    )
    raw = model.predict(
        np.full((90, 120, 3), 51, np.uint8)
    )  # any image size: resized there and back
    assert raw.shape == (90, 120) and np.allclose(raw, A * 0.2 + B, atol=1e-5)
    fixed = onnx_teacher(tmp_path / "fixed.onnx")
    with pytest.raises(
        DataError,
        match=r"fixed.onnx: teacher.height/width 24x32 differ from the model's fixed "
        r"input 48x64",
    ):
        TeacherModel(TeacherConfig(model=str(fixed), height=24, width=32))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk.onnx: cannot load ONNX model"):
        TeacherModel(TeacherConfig(model=str(tmp_path / "junk.onnx")))
    with pytest.raises(DataError, match=r"gone.onnx: teacher model file not found"):
        TeacherModel(TeacherConfig(model=str(tmp_path / "gone.onnx")))


def test_fit_ignores_outliers_and_refuses_too_few_pixels():
    from pipeline.teacher.alignment import fit_inverse_depth, log_residual, to_depth

    rng = np.random.default_rng(0)
    raw = rng.uniform(0.0, 1.0, (60, 80))
    gt = 1.0 / (0.7 * raw + 0.3)
    gt[rng.random(gt.shape) < 0.15] = 50.0  # 15 % far-off ground truth
    scale, shift = fit_inverse_depth(raw, gt)
    assert (scale, shift) == pytest.approx((0.7, 0.3), rel=1e-6)
    plain = np.linalg.lstsq(
        np.stack([raw.ravel(), np.ones(raw.size)], 1), 1 / gt.ravel(), rcond=None
    )[0]
    assert abs(plain[0] - 0.7) > 0.05  # plain least squares would have been pulled away
    # the residual leaves the worst 10 % out: these 15 % of outliers show, 5 % would not
    assert (
        log_residual(to_depth(raw, output="inverse_relative", scale=scale, shift=shift), gt) > 0.5
    )
    assert (
        fit_inverse_depth(raw, np.where(np.arange(raw.size).reshape(raw.shape) < 50, gt, 0.0))
        is None
    )
    # past "infinity" after the shift: the deepest a PNG holds, never negative
    assert to_depth(
        np.array([[-1.0, 0.5]]), output="inverse_relative", scale=1.0, shift=0.0
    ).tolist() == [[65.0, 2.0]]


def test_teacher_channel_moves_exactly_like_the_ground_truth(tmp_path):
    """The teacher map shares every crop, resize and flip of the ground truth; the RGB and
    ground truth stay what training without a teacher sees."""
    import tensorflow as tf

    from pipeline.core.config import AugmentConfig
    from pipeline.data.tfdata import PairSource, train_dataset

    rows = [scene(tmp_path / "src", f"{i}.png", i, height=60, width=90) for i in range(3)]
    rgb, depth = [r["rgb"] for r in rows], [r["depth"] for r in rows]
    aug = AugmentConfig(crop_min_scale=0.5, crop_prob=1.0)
    kwargs = dict(
        seed=3,
        first_epoch=0,
        epochs=2,
        steps_per_epoch=3,
        batch_size=2,
        height=32,
        width=48,
        augment_cfg=aug,
    )
    plain = PairSource(rgb, depth, cache_max_mb=0, size=(48, 64))
    taught = PairSource(rgb, depth, cache_max_mb=64, size=(48, 64), teacher_paths=depth[:2] + [""])
    assert taught.cached and not plain.cached
    without_map = 0
    for (x0, y0), (x1, y1) in zip(train_dataset(plain, **kwargs), train_dataset(taught, **kwargs)):
        assert y0.shape[-1] == 1 and y1.shape[-1] == 2
        tf.debugging.assert_equal(x0, x1)
        tf.debugging.assert_equal(y0[..., 0], y1[..., 0])
        for i in range(2):
            if (
                float(tf.reduce_max(y1[i, ..., 1])) > 0
            ):  # a map: the very same pixels as its ground truth
                tf.debugging.assert_equal(y1[i, ..., 0], y1[i, ..., 1])
            else:
                without_map += 1  # the image without a map ("" = dropped) reads as all invalid
    assert without_map > 0


def test_distill_and_fill_invalid_losses():
    import tensorflow as tf

    from pipeline.core.config import LossConfig
    from pipeline.model.losses import gradient_loss, make_loss, silog_loss

    rng = np.random.default_rng(1)
    gt = rng.uniform(1.0, 4.0, (2, 8, 8, 1)).astype(np.float32)
    gt[0, :4] = 0.0  # a hole
    gt[1] = 0.0  # an unlabeled image: no ground truth at all
    teacher = rng.uniform(1.0, 4.0, (2, 8, 8, 1)).astype(np.float32)
    pred = tf.constant(rng.uniform(1.0, 4.0, (2, 8, 8, 1)).astype(np.float32))
    y = tf.constant(np.concatenate([gt, teacher], -1))
    gt_only = LossConfig(grad_weight=0.0)
    assert float(make_loss(gt_only)(y, pred)) == pytest.approx(
        float(silog_loss(gt[:1], pred[:1], lam=0.85)), rel=1e-5
    )
    both = LossConfig(grad_weight=0.0, distill_weight=0.5)
    want = float(silog_loss(gt[:1], pred[:1], lam=0.85)) + 0.5 * float(
        silog_loss(teacher, pred, lam=0.85)
    )
    assert float(make_loss(both)(y, pred)) == pytest.approx(want, rel=1e-5)
    # the teacher's edges: gradient matching to its map, on every image that has one
    edges = LossConfig(grad_weight=0.0, distill_weight=0.5, distill_grad_weight=0.3)
    assert float(make_loss(edges)(y, pred)) == pytest.approx(
        want + 0.3 * float(gradient_loss(teacher, pred)), rel=1e-5
    )
    assert float(gradient_loss(teacher, pred)) > 0.01  # the term is not a vanishing one
    filled = np.where(gt > 0, gt, teacher)
    assert float(make_loss(gt_only, fill_invalid=True)(y, pred)) == pytest.approx(
        float(silog_loss(filled, pred, lam=0.85)), rel=1e-5
    )
    # validation (ground truth alone) with distillation only: nothing to add
    assert (
        float(
            make_loss(LossConfig(silog_weight=0.0, grad_weight=0.0, distill_weight=1.0))(gt, pred)
        )
        == 0.0
    )


def test_extra_data_follows_what_trained_the_model():
    from pipeline.results.submission import describe_run, extra_data_flag, extra_data_used

    params = load_params()
    assert extra_data_used(params) == [] and extra_data_flag(params) == 0
    assert "extra data" not in describe_run(params)
    taught = load_params(
        overrides={
            "teacher": {"model": "models/teacher/big.onnx", "output": "inverse_relative"},
            "data": {
                "sources": {"synthetic": {"path": "data/synthetic"}, "tum": {"path": "../tum"}},
                "unlabeled": {"web": {"path": "../web"}},
            },
            "train": {"encoder_weights": "imagenet"},
        }
    )
    assert extra_data_used(taught) == [
        "source tum (../tum)",
        "unlabeled web (../web)",
        "teacher big.onnx (inverse_relative)",
        "encoder weights ImageNet (keras.applications)",
    ]
    assert extra_data_flag(taught) == 1
    assert (
        "extra data: source tum (../tum), unlabeled web (../web), teacher big.onnx"
        in describe_run(taught)
    )
    # naming tum as the challenge's own leaves only what is really extra;
    # package.extra_data forces it
    mine = load_params(
        overrides={
            "data": {"sources": {"tum": {"path": "../tum"}}},
            "package": {"challenge_sources": ["tum"]},
        }
    )
    assert extra_data_flag(mine) == 0
    assert extra_data_flag(load_params(overrides={"package": {"extra_data": 1}})) == 1


def _set_params(root, **sections):
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        for key, value in values.items():
            target = params[section]
            *parents, last = key.split(".")
            for part in parents:
                target = target[part]
            target[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_with_pipeline_made_teachers_reruns_only_the_student(
    tiny_repro, tmp_path, monkeypatch
):
    """The pipeline's own model as the teacher (TFLite, then Keras): the teacher stage runs
    once, and a student param change reruns train but reuses the teacher's maps."""
    # A copy of the session's repro'd tiny project: its models were made by the pipeline
    root = Path(
        shutil.copytree(
            tiny_repro,
            tmp_path / "project",
            symlinks=True,
            ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"),
        )
    )
    monkeypatch.chdir(root)  # alignment.csv lists paths relative to the project root
    run([dvc_bin(), "repro", "export"], root)  # up to date unless another test changed a param
    assert (
        (root / "data/teacher/alignment.csv").read_text().startswith("source,name,kind")
    )  # no teacher: empty
    for suffix in ("keras", "tflite"):
        shutil.copy(root / f"models/model.{suffix}", root / f"models/teacher/own.{suffix}")
    extra = root / "extra"
    for i in range(2):
        write_rgb_png(
            extra / "rgb" / f"{i}.png",
            np.random.default_rng(i).integers(0, 256, (120, 160, 3), np.uint8),
        )
    _set_params(
        root,
        teacher={"model": "models/teacher/own.tflite", "max_residual": 10.0, "fill_invalid": True},
        train={"loss.distill_weight": 1.0},
        data={"unlabeled": {"extra": {"path": "extra"}}},
    )
    first = run([dvc_bin(), "repro", "train"], root).stdout
    assert "Running stage 'teacher'" in first and "Running stage 'train'" in first
    assert "Running stage 'unlabeled@extra'" in first
    rows = read_teacher_index(root / "data/teacher/alignment.csv")
    assert [r["kind"] for r in rows].count("unlabeled") == 2 and all(r["teacher"] for r in rows)
    for r in rows:  # at the size of the image it was made from
        assert read_depth_mm(root / r["teacher"]).shape == read_rgb(root / r["rgb"]).shape[:2]
    assert "teacher maps for" in first  # the train log says what trained on them

    epochs = yaml.safe_load((root / "params.yaml").read_text())["train"]["epochs"]
    _set_params(
        root, train={"epochs": epochs + 1}
    )  # a student param: what would rerun (--dry: nothing is run)
    second = run([dvc_bin(), "repro", "--dry", "train"], root).stdout
    assert "Running stage 'train'" in second and "Running stage 'teacher'" not in second
    assert "Stage 'teacher' didn't change" in second

    # the Keras teacher of the same model gives nearly the same maps (its core runs at the
    # working size)
    tflite_maps = {r["name"]: read_depth_m(root / r["teacher"]) for r in rows}
    _set_params(root, teacher={"model": "models/teacher/own.keras"})
    run(["python", "-m", "stages.teacher"], root)
    keras_rows = read_teacher_index(root / "data/teacher/alignment.csv")
    for r in keras_rows:
        ratio = read_depth_m(root / r["teacher"]) / tflite_maps[r["name"]]
        assert math.isclose(float(np.median(ratio)), 1.0, abs_tol=0.05), r["name"]


def test_with_teacher_joins_maps_and_adds_only_the_configured_unlabeled_images():
    from pipeline.model.training import with_teacher

    train = [
        {"name": "a.png", "source": "tum", "rgb": "tum/rgb/a.png", "depth": "tum/depth/a.png"},
        {"name": "b.png", "source": "tum", "rgb": "tum/rgb/b.png", "depth": "tum/depth/b.png"},
    ]
    maps = [
        {
            "source": "tum",
            "name": "a.png",
            "kind": "labelled",
            "rgb": "tum/rgb/a.png",
            "teacher": "t/tum/a.png",
        },
        {
            "source": "tum",
            "name": "b.png",
            "kind": "labelled",
            "rgb": "tum/rgb/b.png",
            "teacher": "",
        },  # dropped
        {
            "source": "web",
            "name": "u.png",
            "kind": "unlabeled",
            "rgb": "web/rgb/u.png",
            "teacher": "t/web/u.png",
        },
        {
            "source": "old",
            "name": "v.png",
            "kind": "unlabeled",
            "rgb": "old/rgb/v.png",
            "teacher": "t/old/v.png",
        },
    ]
    rows = with_teacher(train, maps, "alignment.csv", unlabeled={"web": None})
    assert [(r["rgb"], r["depth"], r["teacher"]) for r in rows] == [
        ("tum/rgb/a.png", "tum/depth/a.png", "t/tum/a.png"),
        ("tum/rgb/b.png", "tum/depth/b.png", ""),
        ("web/rgb/u.png", "", "t/web/u.png"),
    ]
    with pytest.raises(
        DataError, match=r"alignment.csv: no teacher entry for tum/rgb/c.png \(1 train images\)"
    ):
        with_teacher(train + [{**train[0], "rgb": "tum/rgb/c.png"}], maps, "alignment.csv")


def test_unlabeled_folders_list_rgb_only_and_name_what_is_wrong(tmp_path):
    from pipeline.data.dataset import list_unlabeled

    folder = tmp_path / "web"
    with pytest.raises(
        DataError, match=r"web: unlabeled folder needs rgb/NAME.png .* no rgb/ found"
    ):
        list_unlabeled(folder)
    (folder / "rgb").mkdir(parents=True)
    with pytest.raises(DataError, match=r"web/rgb: no PNG images"):
        list_unlabeled(folder)
    for i in range(3):
        write_rgb_png(folder / "rgb" / f"{i}.png", np.full((30, 40, 3), 10 * i, np.uint8))
    (folder / "depth").mkdir()
    (folder / "depth" / "0.png").write_bytes(b"never read")  # a depth/ beside it is ignored
    rows = list_unlabeled(folder, max_images=2)
    assert [(r["name"], r["width"], r["height"]) for r in rows] == [
        ("0.png", 40, 30),
        ("1.png", 40, 30),
    ]
    (folder / "rgb" / "0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"web/rgb/0.png: not a readable image"):
        list_unlabeled(folder)


# ------------------------------------------------------------- teachers as published
PYDNET = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "teachers"
    / "pydnet_matterport"
    / "pydnet_matterport.tflite"
)
SHARED_SCENES = {
    "tum": PYDNET.parents[2] / "data" / "tum_fr1_xyz",
    "hololens": PYDNET.parents[2] / "data" / "hololens2_office",
}
DEPTH_PER_RED = 4.0  # the scenes below: true depth = 4 m x red (0..1)


def relative_teacher(path, *, height=48, width=64):
    """An ONNX model with two outputs, as published models come: output 0 a useless constant
    map, output 1 relative depth = red x green (green, one value per image, stands for the
    scale a relative teacher changes from image to image). So the true depth is
    DEPTH_PER_RED / green x output 1: a per-image scale the alignment must find."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["image", "r0", "r1", "axis"], ["red"]),
            helper.make_node("Slice", ["image", "g0", "g1", "axis"], ["green"]),
            helper.make_node("Mul", ["red", "green"], ["relative"]),
            helper.make_node("Mul", ["red", "zero"], ["flat0"]),
            helper.make_node("Add", ["flat0", "one"], ["flat"]),
        ],
        "relative_teacher",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])],
        [
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 1, height, width]),
            helper.make_tensor_value_info("relative", TensorProto.FLOAT, [1, 1, height, width]),
        ],
        [
            helper.make_tensor(n, TensorProto.INT64, [1], [v])
            for n, v in (("r0", 0), ("r1", 1), ("g0", 1), ("g1", 2), ("axis", 1))
        ]
        + [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def relative_scene(folder, name, green, seed, *, height=48, width=64):
    """RGB with red encoding depth (DEPTH_PER_RED x red) and one green value for the image."""
    rng = np.random.default_rng(seed)
    red = np.clip(
        np.linspace(0.2, 0.95, width)[None, :] + rng.uniform(-0.05, 0.05, (height, width)), 0.1, 1
    )
    rgb = np.stack(
        [np.rint(red * 255), np.full((height, width), green), np.full((height, width), 90)], -1
    )
    depth = DEPTH_PER_RED * rgb[..., 0] / 255.0
    depth[:2] = 0.0  # invalid rows, like a real sensor
    write_rgb_png(folder / "rgb" / name, rgb.astype(np.uint8))
    write_depth_png(folder / "depth" / name, depth)
    return {
        "source": "src",
        "name": name,
        "rgb": str(folder / "rgb" / name),
        "depth": str(folder / "depth" / name),
    }


def test_relative_output_recovers_each_images_scale_and_unlabeled_take_the_median(tmp_path):
    from pipeline.teacher.alignment import OUTPUT_ALIGNMENT
    from pipeline.teacher.labels import run_teacher, summarize

    greens = (64, 128, 255)  # output 1 is red x green/255: the scale differs 4x between images
    labelled = [relative_scene(tmp_path / "src", f"{i}.png", g, i) for i, g in enumerate(greens)]
    unlabeled = [{**relative_scene(tmp_path / "extra", "u.png", 200, 7), "source": "extra"}]
    cfg = TeacherConfig(
        model=str(relative_teacher(tmp_path / "rel.onnx")),
        output="relative",
        output_index=1,
        normalize="unit",
    )
    rows = run_teacher(
        cfg, labelled=labelled, unlabeled=unlabeled, write_dir=tmp_path / "out", final_dir="out"
    )

    assert (
        OUTPUT_ALIGNMENT["relative"] == "affine_inverse"
    )  # the measured rule: 1/depth = scale / raw + shift
    by_name = {r["name"]: r for r in rows}
    for i, green in enumerate(greens):
        row = by_name[f"{i}.png"]  # raw = red x green/255, 1/depth = (green/255 / 4) / raw
        assert float(row["scale"]) == pytest.approx(green / 255 / DEPTH_PER_RED, rel=2e-3)
        assert float(row["shift"]) == pytest.approx(0.0, abs=1e-3)
        assert row["kept"] == 1 and float(row["si_rmse"]) < 0.01 and float(row["residual"]) < 0.01
        truth, taught = read_depth_m(labelled[i]["depth"]), read_depth_m(tmp_path / row["teacher"])
        assert np.abs(taught - truth)[truth > 0].max() < 0.01  # metres
    # the unlabeled image: the teacher's own shape times the median scale (green 128's)
    u = by_name["u.png"]
    assert (
        float(u["scale"]) == pytest.approx(DEPTH_PER_RED * 255 / 128, rel=2e-3)
        and float(u["shift"]) == 0
    )
    taught = read_depth_m(tmp_path / u["teacher"])
    truth = read_depth_m(tmp_path / "extra/depth/u.png")
    valid = truth > 0
    assert np.allclose(
        taught[valid] / truth[valid], 200 / 128, rtol=0.01
    )  # right shape, the median's scale
    scores = summarize(rows, cfg)["sources"]["src"]
    assert scores["n_images"] == 3 and scores["si_rmse"] < 0.01 < scores["baseline_si_rmse"]


def test_a_wrong_output_index_is_one_line_that_lists_the_outputs(tmp_path):
    from pipeline.teacher.model import TeacherModel

    path = relative_teacher(tmp_path / "two.onnx")
    with pytest.raises(DataError) as err:
        TeacherModel(TeacherConfig(model=str(path), output="relative", output_index=2))
    assert str(err.value) == (
        f"{path}: teacher.output_index=2, but the model has 2 output(s): "
        "0: flat [1, 1, 48, 64], 1: relative [1, 1, 48, 64]"
    )
    raw = TeacherModel(
        TeacherConfig(model=str(path), output="relative", output_index=0, normalize="unit")
    )
    assert np.allclose(
        raw.predict(np.full((48, 64, 3), 99, np.uint8)), 1.0
    )  # output 0: the flat one


@pytest.mark.skipif(not PYDNET.is_file(), reason=f"{PYDNET} missing (../shared beside the project)")
def test_the_published_pydnet_teacher_runs_as_shipped_and_aligns_to_ground_truth(tmp_path):
    """The real shared file: one input of 448x640 in 0..1, three outputs (finest first),
    relative depth with a scale of its own per image. On 2 images of each shared scene
    (which it never saw) its aligned depth beats a constant clearly, as its README says
    (ratio ~0.6); teacher.output_index=2 takes the coarsest head instead."""
    from pipeline.data.dataset import build_split
    from pipeline.teacher.labels import run_teacher, source_scores
    from pipeline.teacher.model import TeacherModel

    rows = [
        r
        for r in build_split(
            {k: str(v) for k, v in SHARED_SCENES.items()}, val="blocks", val_fraction=0.2
        )
        if r["split"] == "train"
    ]
    labelled = [
        r
        for source in SHARED_SCENES
        for r in [x for x in rows if x["source"] == source][10::40][:2]
    ]
    cfg = TeacherConfig(model=str(PYDNET), output="relative", normalize="unit", max_residual=0.3)
    model = TeacherModel(cfg, num_threads=2)
    assert model.size == (448, 640)
    with pytest.raises(
        DataError,
        match=r"output_index=3, but the model has 3 output\(s\): 0: .*1x448x640x1".replace(
            "1x448x640x1", r"\[1, 448, 640, 1\]"
        ),
    ):
        TeacherModel(TeacherConfig(model=str(PYDNET), output="relative", output_index=3))
    fine = run_teacher(
        cfg,
        labelled=labelled,
        unlabeled=[],
        write_dir=tmp_path / "fine",
        final_dir="fine",
        num_threads=2,
    )
    scores = source_scores(fine)
    for source in SHARED_SCENES:
        assert scores[source]["n_images"] == 2
        assert scores[source]["ratio_to_constant"] < 0.8, scores  # a constant scores 1.0
    assert all(r["kept"] == 1 for r in fine)
    coarse = run_teacher(
        TeacherConfig(**{**cfg.__dict__, "output_index": 2}),
        labelled=labelled,
        unlabeled=[],
        write_dir=tmp_path / "coarse",
        final_dir="coarse",
        num_threads=2,
    )
    # output_index acts: the coarsest head's maps are other maps (blurrier), not the finest's
    fine_map, coarse_map = (read_depth_m(tmp_path / rows[0]["teacher"]) for rows in (fine, coarse))
    assert np.abs(np.log(fine_map) - np.log(coarse_map)).mean() > 0.01


# The README's two commands of "Learning from a teacher" (tests/test_readme.py maps them here)
README_TEACHER_LINK = (
    "ln -s ../../../shared/teachers/pydnet_matterport/pydnet_matterport.tflite models/teacher/"
)
README_TEACHER_RUN = "make exp PRESET=presets/teacher.yaml"


@pytest.mark.skipif(not PYDNET.is_file(), reason=f"{PYDNET} missing (../shared beside the project)")
def test_readme_teacher_commands_label_every_source_with_the_shared_teacher(tmp_path, monkeypatch):
    """The README's link and preset, as a user types them, in a git copy of the project with
    ../shared beside it; DVC runs up to the teacher stage (EXP_ARGS), a few images a source."""
    from conftest import REPO, make_project, project_env, require_program

    readme = (REPO / "README.md").read_text()
    assert README_TEACHER_LINK in readme and README_TEACHER_RUN in readme  # what a user copies
    make = require_program("make", "apt-get install make")
    (tmp_path / "shared").symlink_to(PYDNET.parents[2])  # ../shared, as beside a clone
    project = make_project(tmp_path / "project")
    shutil.copy(REPO / "Makefile", project / "Makefile")
    (project / ".venv").symlink_to(
        Path(sys.executable).parent.parent
    )  # this venv, installed already
    env = project_env()
    run(["bash", "-c", README_TEACHER_LINK], project)
    assert (
        "pydnet" not in run(["git", "status", "--porcelain"], project).stdout
    )  # git-ignored: never committed
    args = README_TEACHER_RUN.split()[1:] + ["EXP_ARGS=teacher -S data.max_images=3", "INSTALLED="]
    proc = subprocess.run(
        [make, *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    stats = json.loads((project / "metrics/teacher.json").read_text())
    assert (stats["output"], stats["output_index"]) == ("relative", 0) and stats[
        "unlabeled_images"
    ] == 3
    for source in ("tum", "hololens"):  # scenes it never saw: clearly better than a constant
        assert stats["sources"][source]["n_images"] == 2, stats
        assert stats["sources"][source]["ratio_to_constant"] < 0.8, stats
    monkeypatch.chdir(project)  # the maps' paths are relative to the project root
    rooms = [r for r in read_teacher_index("data/teacher/alignment.csv") if r["source"] == "rooms"]
    assert len(rooms) == 3 and all(read_depth_m(r["teacher"]).min() > 0 for r in rooms)
    assert (
        "teacher: hololens: si-RMSE" in proc.stdout + proc.stderr
    )  # the anchor, printed per source
