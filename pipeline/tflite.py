"""Keras -> TFLite conversion, quantization, op checks and Keras-vs-TFLite parity.

The device runs the TFLite builtin op set only (no Flex/select-TF ops), so conversion is
restricted to builtins and a model that needs anything else fails here, at export, with
the offending op named - not later on the phone or the Pi.

Timing lives elsewhere: `pipeline/tflite_runner.py` (self-contained, copied to devices)
and `pipeline/timing.py` / `pipeline/remote.py`, which run it in a fresh process.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

PRECISIONS = ("fp32", "fp16", "dynamic_int8", "int8")


class ExportError(RuntimeError):
    """Conversion failed or produced a model the device cannot run; one-line message."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log  # the converter's full output, for whoever wants the details


@contextlib.contextmanager
def captured_output():
    """Capture fds 1 and 2 *and* sys.stdout/sys.stderr for the block.

    The TFLite converter prints ~185 lines from Python and C++ (absl/MLIR); only an
    OS-level redirect catches the C++ part, and Python's sys.stdout may not be fd 1
    (pytest, notebooks), so both levels are redirected. Yields a list that receives
    the text on exit.
    """
    sink: list[str] = []
    py_buf = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            with contextlib.redirect_stdout(py_buf), contextlib.redirect_stderr(py_buf):
                yield sink
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            sink.append(py_buf.getvalue() + tmp.read().decode("utf-8", "replace"))


_NON_BUILTIN_PATTERNS = (
    re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op"),
    re.compile(r"^\s*(?:Custom|Flex) ops:\s*(.+)$", re.M),
    re.compile(r"'tf\.(\w+)' op is not supported"),
)


def non_builtin_ops(log: str) -> list[str]:
    """Op names the converter refused because they are not TFLite builtins."""
    found: list[str] = []
    for pattern in _NON_BUILTIN_PATTERNS:
        for match in pattern.finditer(log):
            for name in re.split(r"[,\s]+", match.group(1)):
                name = name.strip().removeprefix("Flex")
                if name and name not in found:
                    found.append(name)
    return found


def _first_error_line(log: str) -> str:
    for line in log.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:200]
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "unknown converter error"


def _with_batch_one(model):
    """Rebuild `model` with a static batch of 1: the device graph has no dynamic dims."""
    import keras

    shape = tuple(model.inputs[0].shape)
    if len(model.inputs) != 1 or shape[0] == 1:
        return model
    if any(d is None for d in shape[1:]):
        raise ExportError(f"model input shape {shape} has unknown H/W/C; wrap it for the device size first")
    inp = keras.Input(batch_shape=(1, *shape[1:]), dtype=model.inputs[0].dtype, name="image")
    return keras.Model(inp, model(inp), name=f"{model.name}_b1")


def _representative_fn(representative) -> Callable[[], Iterable[list[np.ndarray]]]:
    """Accept a callable or an iterable of float32 Nx H x W x 3 (or HxWx3) RGB 0..255 batches."""

    def gen():
        items = representative() if callable(representative) else representative
        for item in items:
            arr = np.asarray(item, dtype=np.float32)
            if arr.ndim == 3:
                arr = arr[None]
            for i in range(arr.shape[0]):
                yield [arr[i : i + 1]]

    return gen


def convert(keras_model, *, precision: str, representative=None) -> bytes:
    """Keras model -> TFLite flatbuffer bytes, builtin ops only.

    precision: fp32 | fp16 (fp16 weights, fp32 compute) | dynamic_int8 (int8 weights,
    dynamic-range activations) | int8 (full integer; needs `representative`, keeps
    float32 input/output so the model stays a drop-in for the fp32 one).
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "int8" and representative is None:
        raise ExportError("precision int8 needs representative images for calibration")
    model = _with_batch_one(keras_model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_fn(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    error = None
    with captured_output() as log, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # converter UserWarnings join the log, not the console
        try:
            flatbuffer = converter.convert()
        except Exception as err:  # ConverterError and friends; details are in the log
            error = err
    text = "".join(log) + "".join(f"warning: {w.message}\n" for w in caught)
    if error is not None:
        text = f"{text}\n{error}"
        sys.stderr.write(text + "\n")  # shown only on failure
        ops = non_builtin_ops(text)
        if ops:
            raise ExportError(
                f"model needs non-builtin TF ops: {', '.join(ops)}; the device runtime has builtin ops only",
                text,
            ) from None
        raise ExportError(f"TFLite conversion ({precision}) failed: {_first_error_line(text)}", text) from None
    summary = op_summary(flatbuffer)
    if summary["non_builtin"]:
        raise ExportError(
            f"converted model contains non-builtin ops: {', '.join(summary['non_builtin'])}", text
        )
    return flatbuffer


def _interpreter(tflite_bytes: bytes, *, threads: int = 1, delegates: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        return Interpreter(model_content=tflite_bytes, num_threads=threads, experimental_op_resolver_type=resolver)
    except ValueError as err:
        raise ExportError(f"LiteRT cannot load the model: {str(err).splitlines()[0]}") from None


def _macs(op: dict, shape_of: Callable[[int], tuple]) -> int:
    """Multiply-accumulates of one conv/FC op from its tensor shapes (0 for other ops)."""
    name, ins, outs = op["op_name"], op["inputs"], op["outputs"]
    try:
        out = shape_of(outs[0])
        if name == "CONV_2D":  # filter [O, kh, kw, I/groups]
            return int(np.prod(out)) * int(np.prod(shape_of(ins[1])[1:]))
        if name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, O]
            f = shape_of(ins[1])
            return int(np.prod(out)) * f[1] * f[2]
        if name == "TRANSPOSE_CONV":  # inputs: output_shape, filter [O, kh, kw, I], x
            f, x = shape_of(ins[1]), shape_of(ins[2])
            return int(np.prod(x)) * f[0] * f[1] * f[2]
        if name == "FULLY_CONNECTED":  # weights [O, I]
            return int(np.prod(out)) * shape_of(ins[1])[1]
    except (IndexError, KeyError, TypeError):
        return 0
    return 0


def op_summary(tflite_bytes: bytes) -> dict:
    """Op names and counts, I/O signature, MACs of conv/FC ops and any non-builtin ops."""
    interp = _interpreter(tflite_bytes, delegates=False)
    ops = interp._get_ops_details()  # original graph, before any delegate partitioning
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interp.get_tensor_details()}
    counts: dict[str, int] = {}
    non_builtin: list[str] = []
    macs = 0
    for op in ops:
        name = op["op_name"]
        counts[name] = counts.get(name, 0) + 1
        if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE") or name.startswith("Custom"):
            if name not in non_builtin:
                non_builtin.append(name)
        macs += _macs(op, shapes.__getitem__)

    def io(details):
        return [{"shape": [int(d) for d in d_["shape"]], "dtype": np.dtype(d_["dtype"]).name} for d_ in details]

    return {
        "ops": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "n_ops": len(ops),
        "non_builtin": non_builtin,
        "macs": int(macs),
        "inputs": io(interp.get_input_details()),
        "outputs": io(interp.get_output_details()),
    }


def run_tflite(tflite_bytes: bytes, images: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Run the model on N x H x W x 3 float32 images one by one; returns N x H x W x C."""
    interp = _interpreter(tflite_bytes, threads=threads)
    with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
        interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for image in np.asarray(images, dtype=np.float32):
        interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interp.invoke()
        results.append(np.array(interp.get_tensor(out["index"]))[0])
    return np.stack(results).astype(np.float32)


def _mean_si_rmse(preds, gts) -> float:
    from pipeline.metrics import image_metrics

    values = [image_metrics(pred=p, gt=g)["si_rmse"] for p, g in zip(preds, gts)]
    return float(np.nanmean(values)) if values else float("nan")


def parity(keras_model, tflite_bytes: bytes, images, depths=None) -> dict:
    """Keras vs TFLite outputs on the same float32 RGB 0..255 images (metres).

    max/mean abs diff compare the two predictions directly. With ground-truth `depths`
    (HxW metres, 0 = invalid) also the change in mean si-RMSE the conversion causes;
    without, si-RMSE of TFLite measured against Keras as the reference.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    ref = np.stack([np.asarray(keras_model(img[None], training=False))[0] for img in images])
    got = run_tflite(tflite_bytes, images)
    if ref.shape != got.shape:
        raise ExportError(f"Keras output {ref.shape} and TFLite output {got.shape} differ in shape")
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    result = {
        "images": int(len(images)),
        "max_abs_diff_m": float(diff.max()),
        "mean_abs_diff_m": float(diff.mean()),
        "si_rmse_tflite_vs_keras": _mean_si_rmse(got[..., 0], ref[..., 0]),
    }
    if depths is not None:
        k = _mean_si_rmse(ref[..., 0], depths)
        t = _mean_si_rmse(got[..., 0], depths)
        result.update(si_rmse_keras=k, si_rmse_tflite=t, si_rmse_diff=t - k)
    return result


def load_rgb_batch(paths, *, height: int, width: int) -> np.ndarray:
    """RGB PNGs -> N x height x width x 3 float32 0..255 (bilinear resize when sizes differ)."""
    from PIL import Image

    from pipeline.files import read_rgb

    out = np.empty((len(paths), height, width, 3), dtype=np.float32)
    for i, path in enumerate(paths):
        rgb = read_rgb(path)
        if rgb.shape[:2] != (height, width):
            rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        out[i] = rgb
    return out


def load_depth_batch(paths, *, height: int, width: int) -> np.ndarray:
    """Depth PNGs -> N x height x width float32 metres (nearest resize keeps 0 = invalid)."""
    from PIL import Image

    from pipeline.files import read_depth_m

    out = np.empty((len(paths), height, width), dtype=np.float32)
    for i, path in enumerate(paths):
        depth = read_depth_m(path)
        if depth.shape != (height, width):
            depth = np.asarray(Image.fromarray(depth).resize((width, height), Image.NEAREST))
        out[i] = depth
    return out


def write_tflite(path: str | os.PathLike, tflite_bytes: bytes) -> None:
    from pipeline.files import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(tflite_bytes)


def _spread(rows: list, n: int) -> list:
    """n rows evenly spread over `rows` (deterministic; covers the whole sequence)."""
    if n >= len(rows):
        return list(rows)
    return [rows[int(i * len(rows) / n)] for i in range(n)]


def load_keras_model(path: str | os.PathLike):
    """models/model.keras without its training config (custom losses are not needed)."""
    from pipeline.files import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (run the train stage first)")
    import keras

    import pipeline.models  # noqa: F401  registers the project's serializable layers

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # keras raises many types for a bad archive
        raise DataError(f"{path}: cannot load Keras model ({str(err).splitlines()[0][:200]})") from None


def export_model(core, split_csv: str | os.PathLike, *, cfg) -> tuple[bytes, dict]:
    """Wrap the core model for the device, convert at cfg.precision, check parity.

    cfg: the `export` params section. int8 calibration uses cfg.representative_images
    train images; parity uses cfg.parity_images val images (with their ground truth).
    Returns (flatbuffer, report for metrics/export.json).
    """
    import time

    from pipeline.data import read_split
    from pipeline.files import DataError
    from pipeline.models import wrap_for_device

    rows = read_split(split_csv)
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    device_model = wrap_for_device(core, height=cfg.height, width=cfg.width)

    representative = None
    rep_rows = _spread(train_rows, cfg.representative_images)
    if cfg.precision == "int8":
        if not rep_rows:
            raise DataError(f"{split_csv}: no train rows for int8 calibration")

        def representative():  # loaded lazily, one image at a time
            for row in rep_rows:
                yield load_rgb_batch([row["rgb"]], height=cfg.height, width=cfg.width)

    t0 = time.perf_counter()
    flatbuffer = convert(device_model, precision=cfg.precision, representative=representative)
    convert_s = time.perf_counter() - t0
    summary = op_summary(flatbuffer)

    par_rows = _spread(val_rows, cfg.parity_images)
    if not par_rows:
        raise DataError(f"{split_csv}: no val rows for the Keras-vs-TFLite parity check")
    images = load_rgb_batch([r["rgb"] for r in par_rows], height=cfg.height, width=cfg.width)
    depths = load_depth_batch([r["depth"] for r in par_rows], height=cfg.height, width=cfg.width)
    report = {
        "precision": cfg.precision,
        "height": cfg.height,
        "width": cfg.width,
        "size_bytes": len(flatbuffer),
        "size_mb": round(len(flatbuffer) / 1e6, 4),
        "convert_s": round(convert_s, 2),
        "representative_images": len(rep_rows) if cfg.precision == "int8" else 0,
        "params": int(core.count_params()),
        **summary,
        "parity": parity(device_model, flatbuffer, images, depths),
    }
    return flatbuffer, report
