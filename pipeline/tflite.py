"""Keras -> TFLite conversion, quantization, op checks and LiteRT inference on bytes.

The device runs the TFLite builtin op set only (no Flex/select-TF ops), so conversion is
restricted to builtins and a model that needs anything else fails here, at export, with
the offending op named - not later on the phone or the Pi.

A leaf: it needs no data and no params files, so `probe` uses it on random weights. The
export stage's workflow (split, calibration images, parity) is `pipeline/export.py`;
timing is `pipeline/tflite_runner.py` (self-contained, copied to devices), run in a fresh
process by `pipeline/timing.py` / `pipeline/remote.py`.
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

from pipeline.config import PRECISIONS
from pipeline.errors import ExportError
from pipeline.litert import load_interpreter


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
    interp = load_interpreter(content=tflite_bytes, delegates=False, name="converted model", error=ExportError)
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
    with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
        interp = load_interpreter(content=tflite_bytes, num_threads=threads, name="converted model",
                                  error=ExportError)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for image in np.asarray(images, dtype=np.float32):
        interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interp.invoke()
        results.append(np.array(interp.get_tensor(out["index"]))[0])
    return np.stack(results).astype(np.float32)
