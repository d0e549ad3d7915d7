"""TFLite conversion: every precision converts and runs, non-builtin ops are refused
with a readable error, parity is ~0 for fp32, an export that scores worse than Keras
stops, op summary and MACs are right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import split_csv
from pipeline.core.config import ExportConfig
from pipeline.device import export, tflite

TUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tum_fr1_xyz"
H, W = 64, 80


def tiny_depth_model(height=H, width=W):
    """A small depth-like net; the 32x32 conv (9216 weights) is big enough that the
    dynamic-range quantizer really quantizes it (it skips tensors under 1024 elements)."""
    import keras

    inp = keras.Input((height, width, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(interpolation="bilinear")(x)
    x = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    out = keras.layers.Rescaling(9.9, offset=0.1)(x)  # metres in 0.1..10
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return tiny_depth_model()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, size=(3, H, W, 3)).astype(np.float32)


@pytest.mark.parametrize("precision", tflite.PRECISIONS)
def test_each_precision_converts_and_runs(model, images, precision, capfd):
    flatbuffer = tflite.convert(model, precision=precision, representative=images)
    quiet = capfd.readouterr()
    assert quiet.out == "" and quiet.err == "", "converter chatter leaked on success"

    summary = tflite.op_summary(flatbuffer)
    assert summary["inputs"] == [{"shape": [1, H, W, 3], "dtype": "float32"}]  # float I/O kept
    assert summary["outputs"] == [{"shape": [1, H, W, 1], "dtype": "float32"}]
    assert summary["non_builtin"] == []
    assert summary["ops"]["CONV_2D"] == 3 and summary["ops"]["DEPTHWISE_CONV_2D"] == 1
    if precision == "int8":
        assert summary["ops"].get("QUANTIZE", 0) >= 1 and summary["ops"].get("DEQUANTIZE", 0) >= 1
    if precision == "fp16":
        assert summary["ops"].get("DEQUANTIZE", 0) >= 1  # fp16 weights dequantized at load

    out = tflite.run_tflite(flatbuffer, images)
    assert out.shape == (3, H, W, 1) and np.isfinite(out).all()
    assert 0.1 - 1e-3 <= out.min() and out.max() <= 10.0 + 1e-3

    par = export.parity(model, flatbuffer, images)
    # Metres; about 4x what each precision shows here (the outputs span 4.7..5.1 m).
    tolerance = {"fp32": 1e-4, "fp16": 0.005, "dynamic_int8": 0.01, "int8": 0.1}[precision]
    assert par["max_abs_diff_m"] <= tolerance
    assert par["mean_abs_diff_m"] <= par["max_abs_diff_m"]


def test_quantized_models_are_smaller(model, images):
    sizes = {
        p: len(tflite.convert(model, precision=p, representative=images)) for p in tflite.PRECISIONS
    }
    assert sizes["fp16"] < sizes["fp32"]
    assert sizes["dynamic_int8"] < sizes["fp16"]
    assert sizes["int8"] < sizes["fp16"]


def test_fp32_parity_is_zero_and_si_rmse_matches(model, images):
    flatbuffer = tflite.convert(model, precision="fp32")
    rng = np.random.default_rng(1)
    depths = rng.uniform(0.5, 8.0, size=(3, H, W)).astype(np.float32)
    depths[:, :5] = 0.0  # invalid pixels must not matter
    par = export.parity(model, flatbuffer, images, depths)
    assert par["images"] == 3
    assert par["max_abs_diff_m"] < 1e-4 and par["mean_abs_diff_m"] < 1e-5
    assert abs(par["si_rmse_diff"]) < 1e-5 and par["si_rmse_tflite_vs_keras"] < 1e-5
    assert par["si_rmse_keras"] > 0.1  # random model vs random depth: far from perfect


def test_int8_needs_representative_data(model):
    with pytest.raises(tflite.ExportError, match="representative"):
        tflite.convert(model, precision="int8")


def test_unknown_precision(model):
    with pytest.raises(tflite.ExportError, match="unknown precision 'int4'"):
        tflite.convert(model, precision="int4")


def test_non_builtin_op_is_rejected_with_its_name():
    import keras
    import tensorflow as tf

    class Erfinv(keras.layers.Layer):
        def call(self, x):
            return tf.math.erfinv(tf.clip_by_value(x / 300.0, -0.9, 0.9))

    inp = keras.Input((8, 8, 3))
    bad = keras.Model(inp, Erfinv()(inp))
    with pytest.raises(tflite.ExportError) as err:
        tflite.convert(bad, precision="fp32")
    message = str(err.value)
    assert (
        message == "model needs non-builtin TF ops: Erfinv; the device runtime has builtin ops only"
    )
    assert "Erfinv" in err.value.log  # full converter output kept for whoever needs it


def test_non_builtin_parser():
    log = (
        "error: 'tf.Erfinv' op is neither a custom op nor a flex op\nSome ops are not supported "
        "by the native TFLite runtime\n\tFlex ops: FlexStringJoin, FlexErfinv\n"
    )
    assert tflite.non_builtin_ops(log) == ["Erfinv", "StringJoin"]
    assert tflite.non_builtin_ops("all fine") == []


def test_macs_of_a_single_conv():
    import keras

    inp = keras.Input((32, 40, 3))
    conv = keras.Model(inp, keras.layers.Conv2D(8, 3, padding="same")(inp))
    dw = keras.Model(inp, keras.layers.DepthwiseConv2D(5, padding="same")(inp))
    assert (
        tflite.op_summary(tflite.convert(conv, precision="fp32"))["macs"] == 32 * 40 * 8 * 3 * 3 * 3
    )
    assert tflite.op_summary(tflite.convert(dw, precision="fp32"))["macs"] == 32 * 40 * 3 * 5 * 5


def test_device_size_480x640_int8_with_registry_wrapper(model, images):
    from pipeline.model.networks import wrap_for_device

    device = wrap_for_device(model, height=480, width=640)
    rep = [np.resize(images[0], (480, 640, 3))]
    flatbuffer = tflite.convert(device, precision="int8", representative=rep)
    summary = tflite.op_summary(flatbuffer)
    assert summary["inputs"][0] == {"shape": [1, 480, 640, 3], "dtype": "float32"}
    assert summary["outputs"][0] == {"shape": [1, 480, 640, 1], "dtype": "float32"}
    out = tflite.run_tflite(flatbuffer, rep)
    assert out.shape == (1, 480, 640, 1) and np.isfinite(out).all()
    # the wrapper's resizes stay float: one QUANTIZE after the input resize, one DEQUANTIZE before
    # the output resize (not 480x640 values each way), and XNNPACK runs all of it
    assert (summary["ops"]["QUANTIZE"], summary["ops"]["DEQUANTIZE"]) == (1, 1)
    assert tflite.delegation(flatbuffer) == {
        "partitions": 1,
        "nodes": summary["n_ops"],
        "not_delegated": {},
    }


def test_export_model_report_on_real_images(model, tmp_path):
    names = sorted(p.name for p in (TUM / "rgb").glob("*.png"))[:6]  # 3 train, 3 val: both capped
    split = tmp_path / "split.csv"
    split.write_text(
        split_csv(
            [
                (n[:-4], "train" if i < 3 else "val", TUM / "rgb" / n, TUM / "depth" / n)
                for i, n in enumerate(names)
            ]
        )
    )
    cfg = ExportConfig(
        precision="int8", height=96, width=128, representative_images=2, parity_images=2
    )
    flatbuffer, report = export.export_model(model, split, cfg=cfg)
    assert report["precision"] == "int8" and report["representative_images"] == 2
    assert report["size_bytes"] == len(flatbuffer) and report["size_mb"] == pytest.approx(
        len(flatbuffer) / 1e6, abs=1e-4
    )
    assert report["inputs"][0]["shape"] == [1, 96, 128, 3]  # resized from 480x640 at load
    assert report["n_ops"] == sum(report["ops"].values())
    assert report["min_runtime_version"] == tflite.min_runtime_version(flatbuffer) == "2.2.0"
    par = report["parity"]
    assert par["images"] == 2 and np.isfinite(par["si_rmse_diff"]) and par["max_abs_diff_m"] < 1.0


def test_export_model_without_val_rows_is_a_data_error(model, tmp_path):
    from pipeline.core.files import DataError

    split = tmp_path / "split.csv"
    split.write_text(
        split_csv([("a", "train", f"{TUM}/rgb/000000.png", f"{TUM}/depth/000000.png")])
    )
    with pytest.raises(DataError, match="no val rows"):
        export.export_model(model, split, cfg=ExportConfig(height=64, width=80))


def brightness_depth_model(height, width):
    """Depth = 0.5 + 4 * mean(RGB) / 255 metres: exact on data made by the same rule."""
    import keras

    inp = keras.Input((height, width, 3))
    out = keras.layers.Conv2D(
        1,
        1,
        kernel_initializer=keras.initializers.Constant(4.0 / 765.0),
        bias_initializer=keras.initializers.Constant(0.5),
    )(inp)
    return keras.Model(inp, out)


@pytest.mark.parametrize("calibration", ["alike", "black"])
def test_export_fails_when_tflite_scores_worse_than_keras(tmp_path, calibration):
    """int8 calibrated on images alike the val ones costs ~0.004 si-RMSE; calibrated on
    black images it clips every real input, costs ~0.35, and the export stops instead of
    shipping it."""
    from pipeline.core.files import write_depth_png, write_rgb_png

    h, w = 48, 64
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):  # colour ramps: 2 train (calibration), 2 val (parity)
        ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3) + rng.uniform(
            0, 40, (h, 1, 3)
        )
        rgb = np.clip(ramp, 0, 255).astype(np.uint8)
        split = "train" if i < 2 else "val"
        if split == "train" and calibration == "black":
            rgb = np.zeros_like(rgb)
        write_rgb_png(tmp_path / f"rgb{i}.png", rgb)
        write_depth_png(tmp_path / f"depth{i}.png", 0.5 + 4.0 * rgb.mean(axis=-1) / 255.0)
        rows.append((str(i), split, tmp_path / f"rgb{i}.png", tmp_path / f"depth{i}.png"))
    (tmp_path / "split.csv").write_text(split_csv(rows))
    cfg = ExportConfig(
        precision="int8", height=h, width=w, representative_images=2, parity_images=2
    )
    model = brightness_depth_model(h, w)
    if calibration == "alike":
        _, report = export.export_model(model, tmp_path / "split.csv", cfg=cfg)
        assert report["parity"]["si_rmse_keras"] < 1e-3
        assert report["parity"]["si_rmse_diff"] <= cfg.max_parity_drop
    else:
        with pytest.raises(
            tflite.ExportError,
            match=r"^int8 TFLite si-RMSE is \d\.\d{4} worse than Keras on 2 val "
            r"images, past export.max_parity_drop=0.01$",
        ):
            export.export_model(model, tmp_path / "split.csv", cfg=cfg)


# ------------------------------------------------------------- minimum runtime
def test_min_runtime_and_op_versions_are_read_from_the_flatbuffer(model):
    flatbuffer = tflite.convert(model, precision="fp32")
    ops = tflite.builtin_ops(flatbuffer)
    assert ("CONV_2D", 1) in ops and ("RESIZE_BILINEAR", 3) in ops  # v3: half_pixel_centers
    assert {op for op, _ in ops} == set(tflite.op_summary(flatbuffer)["ops"])
    assert tflite.min_runtime_version(flatbuffer) == "2.2.0"  # the converter's metadata ...
    assert tflite.model_min_runtime(flatbuffer) == "2.2.0"  # ... and OP_MIN_RUNTIME agree
    assert tflite.ops_newer_than(ops, "2.1.0") == [("RESIZE_BILINEAR", 3, "2.2.0")]
    with pytest.raises(tflite.ExportError, match="not a TFLite flatbuffer"):
        tflite.min_runtime_version(b"PK\x03\x04 a zip, not a model")


def test_runtime_versions_compare_number_by_number():
    assert tflite.version_key("2.4") < tflite.version_key("2.4.0") < tflite.version_key("2.12.0")
    ops = [
        ("EXP", 2),
        ("CONV_2D", 3),
        ("TILE", 3),
        ("MADE_UP_OP", 1),
    ]  # unknown ops: the metadata decides
    assert tflite.ops_newer_than(ops, "2.4.0") == [("EXP", 2, "2.12.0"), ("TILE", 3, "2.8.0")]
    assert tflite.ops_newer_than(ops, "2.12.0") == []


def test_export_fails_when_the_model_needs_a_newer_runtime(model, tmp_path):
    rgb, depth = (
        f"{TUM}/rgb/000000.png",
        f"{TUM}/depth/000000.png",
    )  # not read: the check comes first
    split = tmp_path / "split.csv"
    split.write_text(split_csv([("a", "train", rgb, depth), ("b", "val", rgb, depth)]))
    cfg = ExportConfig(height=H, width=W, target_runtime="2.1.0")
    with pytest.raises(tflite.ExportError) as err:
        export.export_model(model, split, cfg=cfg)
    assert str(err.value) == (
        "fp32 model needs TFLite runtime 2.2.0 but export.target_runtime is 2.1.0: "
        "RESIZE_BILINEAR v3 (2.2.0)"
    )


def test_int8_keeps_ops_newer_than_the_target_runtime_in_float():
    """The depth head's exp (and Keras 3's nearest upsampling, a TILE) have int8 kernels only
    since TFLite 2.12 (2.8): the int8 export keeps them in float and the rest int8."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 40, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(
        keras.layers.Rescaling(1 / 127.5)(inp)
    )
    x = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(
        keras.layers.UpSampling2D()(x)
    )
    exp_head = keras.Model(
        inp, keras.layers.Activation("exponential")(keras.layers.Rescaling(6.0, offset=-2.3)(x))
    )
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 40, 3)).astype(np.float32)

    flatbuffer = tflite.convert(
        exp_head, precision="int8", representative=images, target_runtime="2.4.0"
    )
    ops = tflite.builtin_ops(flatbuffer)
    assert ("EXP", 1) in ops and ("TILE", 1) in ops  # float
    assert ("CONV_2D", 3) in ops  # int8
    assert tflite.version_key(tflite.model_min_runtime(flatbuffer)) <= tflite.version_key("2.4.0")
    assert export.check_runtime(
        flatbuffer, precision="int8", target="2.4.0"
    ) == tflite.min_runtime_version(flatbuffer)
    depth = exp_head(images).numpy()
    assert np.abs(tflite.run_tflite(flatbuffer, images) - depth).max() < 0.05 * depth.max()

    all_int8 = tflite.convert(
        exp_head, precision="int8", representative=images, target_runtime=None
    )
    assert tflite.min_runtime_version(all_int8) == "2.12.0"
    with pytest.raises(tflite.ExportError) as err:
        export.check_runtime(all_int8, precision="int8", target="2.4.0")
    assert str(err.value) == (
        "int8 model needs TFLite runtime 2.12.0 but export.target_runtime is 2.4.0: "
        "EXP v2 (2.12.0), TILE v3 (2.8.0)"
    )
