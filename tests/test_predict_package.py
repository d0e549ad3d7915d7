"""TFLite prediction at any input size, packaging a submission, and the evaluate/package stages."""

import csv
import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import split_csv
from pipeline.core.cli import run_stage
from pipeline.core.config import load_params, params_hash
from pipeline.core.files import DataError, read_depth_mm, write_depth_png, write_rgb_png
from pipeline.device.predict import TFLiteDepthModel
from pipeline.results.submission import (
    describe_run,
    model_min_runtime,
    package_submission,
    parse_readme,
    validate_submission,
)

ROOT = Path(__file__).resolve().parents[1]
README = {"runtime_s": 0.05, "cpu": 1, "extra_data": 0, "description": "test"}


def _expected_m(gray: int) -> float:
    return 0.5 + 4.0 * gray / 255.0


@pytest.fixture()
def odd_inputs(tmp_path):
    """Constant-colour RGB PNGs of sizes other than 640x480 (KITTI-like 1242x375, 320x240)."""
    folder = tmp_path / "inputs"
    for name, (h, w), gray in (("kitti.png", (375, 1242), 51), ("small.png", (240, 320), 204)):
        write_rgb_png(folder / name, np.full((h, w, 3), gray, np.uint8))
    (folder / "notes.txt").write_text("not an image")  # ignored by the listing
    return folder


def test_predict_any_size_returns_input_size(models):
    model = TFLiteDepthModel(models["good"])
    assert model.input_size == (480, 640)  # read from the model, not assumed
    for (h, w), gray in (((375, 1242), 51), ((480, 640), 102), ((33, 17), 255)):
        depth = model.predict(np.full((h, w, 3), gray, np.uint8))
        assert depth.shape == (h, w) and depth.dtype == np.float32
        np.testing.assert_allclose(depth, _expected_m(gray), rtol=1e-4)
    # a gradient image: depth follows brightness (left dark = near, right bright = far)
    ramp = np.repeat(np.linspace(0, 255, 900).astype(np.uint8)[None, :, None], 300, 0).repeat(3, 2)
    depth = model.predict(ramp)
    assert depth[:, :100].mean() < depth[:, -100:].mean() - 3.0
    depth = model.predict(np.full((30, 40, 3), 0, np.uint8), out_size=(60, 80))
    assert depth.shape == (60, 80)


def test_predict_rejects_bad_images_and_models(models, tmp_path):
    model = TFLiteDepthModel(models["good"])
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        model.predict(np.zeros((48, 64), np.uint8))
    with pytest.raises(DataError, match="model file not found"):
        TFLiteDepthModel(tmp_path / "nope.tflite")
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(DataError, match=r"corrupt.tflite: cannot load TFLite model"):
        TFLiteDepthModel(corrupt)


def test_predict_does_not_import_tensorflow(models):
    code = (
        "import sys, numpy as np\n"
        "from pipeline.device.predict import TFLiteDepthModel\n"
        f"d = TFLiteDepthModel({str(models['good'])!r}).predict(np.zeros((10, 20, 3), np.uint8))\n"
        "assert d.shape == (10, 20)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_package_odd_sizes_validates_and_keeps_input_sizes(models, odd_inputs, tmp_path):
    inputs = sorted(odd_inputs.glob("*.png"))
    seen = []
    zip_path = tmp_path / "out" / "submission.zip"
    count = package_submission(
        zip_path,
        model_path=models["good"],
        input_files=inputs,
        readme=README,
        progress=lambda i, n: seen.append((i, n)),
    )
    assert count == 2 and seen == [(1, 2), (2, 2)]
    assert validate_submission(zip_path, odd_inputs) == []
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["kitti.png", "model.tflite", "readme.txt", "small.png"]
        assert zf.read("model.tflite") == models["good"].read_bytes()
        for name, gray in (("kitti.png", 51), ("small.png", 204)):
            out = Image.open(io.BytesIO(zf.read(name)))
            assert out.size == Image.open(odd_inputs / name).size  # (1242, 375) and (320, 240)
            mm = np.asarray(out)
            assert mm.dtype == np.uint16
            assert np.abs(mm.astype(float) - 1000 * _expected_m(gray)).max() <= 2  # metres -> mm
        assert parse_readme(zf.read("readme.txt").decode())["runtime_s"] == 0.05


def test_package_refuses_to_publish_an_invalid_submission(models, odd_inputs, tmp_path):
    zip_path = tmp_path / "submission.zip"
    with pytest.raises(
        DataError, match=r"invalid submission: model.tflite: input shapes \[\(1, 240, 320, 3\)\]"
    ):
        package_submission(
            zip_path,
            model_path=models["small"],
            input_files=sorted(odd_inputs.glob("*.png")),
            readme=README,
        )
    assert not zip_path.exists() and not list(tmp_path.glob(".submission.zip*"))


def test_describe_run():
    params = load_params(ROOT / "params.yaml")
    text = describe_run(
        params, {"device": "local", "threads": 2, "median_ms": 12.0}, extra="my\nnote"
    )
    t = params.train
    assert text.startswith(t.arch)
    assert f"working resolution {t.height}x{t.width}" in text
    assert f"precision {params.export.precision}" in text
    assert "timed on local, 2 threads" in text
    assert (
        f"model params hash {params_hash(params, ('base', 'data', 'train', 'teacher', 'export'))}"
        in text
    )
    changed = dataclasses.replace(
        params, track=dataclasses.replace(params.track, experiment="other")
    )
    assert describe_run(changed, None) == describe_run(
        params, None
    )  # tracking params do not matter
    assert text.endswith("reproduce: dvc repro; my note") and "\n" not in text
    assert (
        "est. Pi 4" not in text
    )  # no estimate in benchmark.json (a device timed over SSH): none here
    estimated = describe_run(
        params,
        {
            "device": "local",
            "threads": 2,
            "median_ms": 12.0,
            "est_rpi4_ms": 54.0,
            "est_rpi4_ms_lo": 48.0,
            "est_rpi4_ms_hi": 60.0,
        },
    )
    assert "est. Pi 4 54 ms (an estimate, range 48-60 ms" in estimated
    assert "precision fp32; runs on TFLite >= 2.2.0; model params hash" in describe_run(
        params, None, min_runtime="2.2.0"
    )


def test_model_min_runtime_of_a_model_file(models, tmp_path):
    assert model_min_runtime(models["good"]) == "2.2.0"  # its RESIZE_BILINEAR v3
    with pytest.raises(DataError, match=r"^.*missing.tflite: model file not found$"):
        model_min_runtime(tmp_path / "missing.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"bad.tflite: not a TFLite flatbuffer"):
        model_min_runtime(tmp_path / "bad.tflite")


def _project(tmp_path, model, *, package_inputs=""):
    """A minimal project folder: params.yaml, split.csv with 3 val rows, model, benchmark.json."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["panels"] = 1
    params["package"]["inputs"] = package_inputs
    params["package"]["description"] = "stage test"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(1)
    rows = []
    for i, gray in enumerate((40, 120, 200, 90)):
        name = f"{i:03d}.png"
        rgb, dep = tmp_path / "data/src/rgb" / name, tmp_path / "data/src/depth" / name
        write_rgb_png(rgb, np.full((48, 64, 3), gray, np.uint8))
        depth = _expected_m(gray) * rng.uniform(0.7, 1.3, (48, 64))
        depth[:4] = 0.0  # invalid rows, like a real sensor
        if i == 3:
            depth[:] = 0.0  # no valid pixel: skipped and counted
        write_depth_png(dep, depth)
        rows.append(
            [name, "train" if i == 0 else "val", f"data/src/rgb/{name}", f"data/src/depth/{name}"]
        )
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/split.csv").write_text(split_csv(rows))
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.tflite").write_bytes(model.read_bytes())
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/benchmark.json").write_text(json.dumps({"median_ms": 40.0, "threads": 2}))


def test_evaluate_stage(models, tmp_path, monkeypatch, capsys):
    from stages import evaluate

    _project(tmp_path, models["good"])
    monkeypatch.chdir(tmp_path)
    assert run_stage(evaluate.main, []) == 0
    out = json.loads(Path("metrics/evaluate.json").read_text())
    assert out["n_images"] == 2 and out["n_skipped"] == 1
    # The model's output is constant on a constant-colour image, and si-RMSE is the spread of
    # log depth around any constant: exactly the constant baseline, recomputed here from the
    # GT (valid = above 1 mm, as officially). GT = model output * U(0.7, 1.3): rel <= 0.43.
    spreads = []
    for name in ("001.png", "002.png"):
        mm = read_depth_mm(tmp_path / "data/src/depth" / name).astype(np.float64)
        spreads.append(np.std(np.log(mm[mm > 1.0])))
    assert out["si_rmse"] == pytest.approx(np.mean(spreads), rel=1e-6)
    assert out["baseline_si_rmse"] == pytest.approx(np.mean(spreads), rel=1e-6)
    assert out["rel"] < 0.45
    assert out["runtime_s"] == 0.04 and out["score"] == pytest.approx(
        2 ** (-20 * out["si_rmse"]) / 4.0
    )
    with open("reports/eval_per_image.csv") as f:
        per_image = list(csv.DictReader(f))
    assert [r["name"] for r in per_image] == ["001.png", "002.png", "003.png"]
    assert per_image[2]["n_valid"] == "0"
    for row, spread in zip(per_image, spreads):
        assert float(row["si_rmse"]) == pytest.approx(spread, rel=1e-5)  # written with 6 digits
        assert row["si_rmse"] == row["baseline_si_rmse"]
    panels = sorted(p.name for p in Path("reports/eval_panels").iterdir())
    worst = max(per_image[:2], key=lambda r: float(r["si_rmse"]))["name"][:3]
    best = min(per_image[:2], key=lambda r: float(r["si_rmse"]))["name"][:3]
    assert panels == [f"best_1_src_{best}.png", f"worst_1_src_{worst}.png"]  # source name first
    assert Image.open(f"reports/eval_panels/worst_1_src_{worst}.png").format == "PNG"
    assert all(row["source"] == "src" for row in per_image)
    assert "evaluate: image 3/3" in capsys.readouterr().out


def test_package_stage_with_odd_sized_inputs(models, odd_inputs, tmp_path, monkeypatch):
    from stages import package

    _project(tmp_path, models["good"], package_inputs=str(odd_inputs))
    monkeypatch.chdir(tmp_path)
    assert run_stage(package.main, []) == 0
    assert validate_submission("submission/submission.zip", odd_inputs) == []
    with zipfile.ZipFile("submission/submission.zip") as zf:
        readme = parse_readme(zf.read("readme.txt").decode())
    assert readme["runtime_s"] == 0.04 and readme["cpu"] == 1 and readme["extra_data"] == 0
    assert "reproduce: dvc repro; stage test" in readme["description"]


def test_package_stage_missing_benchmark_fails_cleanly(models, tmp_path, monkeypatch, capsys):
    from stages import package

    _project(tmp_path, models["good"])
    (tmp_path / "metrics/benchmark.json").unlink()
    monkeypatch.chdir(tmp_path)
    assert run_stage(package.main, []) == 2
    assert capsys.readouterr().err.strip() == "error: metrics/benchmark.json: file not found"
    assert not Path("submission/submission.zip").exists()


def test_package_stage_defaults_to_val_split(models, tmp_path, monkeypatch):
    from stages import package

    _project(tmp_path, models["good"])
    monkeypatch.chdir(tmp_path)
    assert run_stage(package.main, []) == 0
    with zipfile.ZipFile("submission/submission.zip") as zf:
        assert sorted(zf.namelist()) == [
            "001.png",
            "002.png",
            "003.png",
            "model.tflite",
            "readme.txt",
        ]
    val_rgb = [tmp_path / "data/src/rgb" / n for n in ("001.png", "002.png", "003.png")]
    assert validate_submission("submission/submission.zip", input_files=val_rgb) == []
    # the train image shares the folder: validating against the whole folder finds it missing
    assert validate_submission("submission/submission.zip", tmp_path / "data/src/rgb") == [
        "missing output 000.png for input 000.png"
    ]


def test_colorize_shares_range_and_grays_out_invalid():
    from pipeline.results.visualize import INVALID_RGB, colorize_depth, depth_range

    gt = np.array([[0.0, 1.0], [2.0, 3.0]])
    vmin, vmax = depth_range(gt)
    assert 1.0 <= vmin < 1.1 and 2.9 < vmax <= 3.0  # 1st/99th percentile of the valid GT only
    a = colorize_depth(gt, vmin=vmin, vmax=vmax)
    b = colorize_depth(np.array([[np.nan, 1.0], [2.0, 99.0]]), vmin=vmin, vmax=vmax)
    assert a.dtype == np.uint8 and a.shape == (2, 2, 3)
    assert tuple(a[0, 0]) == INVALID_RGB and tuple(b[0, 0]) == INVALID_RGB
    assert (a[0, 1] == b[0, 1]).all() and (a[1, 0] == b[1, 0]).all()  # same metres, same colour
    assert (b[1, 1] == a[1, 1]).all()  # beyond the range clips to the far colour
    assert not (a[0, 1] == a[1, 1]).all()
