"""Keras -> TFLite conversion, quantization, op checks and LiteRT inference on bytes.

The device runs the TFLite builtin op set only (no Flex/select-TF ops), so conversion is
restricted to builtins and a model that needs anything else fails here, at export, with
the offending op named - not later on the phone or the Pi.

The device's runtime may also be old (the challenge ran TFLite 2.4/2.5): every model
records the oldest runtime that runs it (`min_runtime_version` metadata), `OP_MIN_RUNTIME`
says which op made it that new, and int8 conversion keeps the few ops whose int8 kernels
are newer than the target runtime in float. It also keeps in float what XNNPACK (LiteRT's
CPU delegate) runs only in float and the device wrapper's resizes, so that the model runs
in one XNNPACK partition; `delegation` says whether it does.

A leaf: it needs no data and no params files, so `probe` uses it on random weights. The
export stage's workflow (split, calibration images, parity) is `pipeline/device/export.py`;
timing is `pipeline/device/tflite_runner.py` (self-contained, copied to devices), run in a fresh
process by `pipeline/device/timing.py` / `pipeline/device/remote.py`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable

import numpy as np

from pipeline.core.config import PRECISIONS, TARGET_RUNTIME
from pipeline.core.errors import ExportError
from pipeline.device.litert import load_interpreter


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


# The oldest TFLite runtime that runs each builtin op, by op version (v1 first), for the ops
# the four architectures convert to in any precision and a few near relatives. Copied from
# FindMinimumRuntimeVersionForOp in tensorflow/lite/tools/versioning/runtime_version.cc (TF
# 2.18), the table the converter derives `min_runtime_version` from; that metadata is the
# authority, this table names the op that made a model new.
OP_MIN_RUNTIME: dict[str, tuple[str, ...]] = {
    "ADD": ("1.5.0", "1.14.0", "2.4.0", "2.6.0", "2.13.0"),
    "AVERAGE_POOL_2D": ("1.5.0", "1.14.0", "2.3.0"),
    "CONCATENATION": ("1.5.0", "1.14.0", "2.3.0", "2.14.0"),
    "CONV_2D": ("1.5.0", "1.14.0", "1.14.0", "2.3.0", "2.4.0", "2.9.0", "2.11.0", "2.15.0"),
    "DEPTHWISE_CONV_2D": ("1.5.0", "1.12.0", "1.14.0", "2.2.0", "2.3.0", "2.3.0", "2.11.0"),
    "DEQUANTIZE": ("1.13.1", "1.14.0", "1.15.0", "2.2.0", "2.7.0", "2.18.0"),
    "EXP": ("1.7.0", "2.12.0"),  # v2 = int8
    "HARD_SWISH": ("1.15.0",),
    "LOGISTIC": ("1.14.0", "1.14.0", "2.3.0"),
    "MAX_POOL_2D": ("1.5.0", "1.14.0", "2.3.0"),
    "MEAN": ("1.6.0", "1.14.0", "2.4.0"),
    "MUL": ("1.5.0", "1.14.0", "1.15.0", "2.3.0", "2.6.0", "2.11.0", "2.13.0"),
    "PAD": ("1.5.0", "1.14.0", "2.4.0", "2.6.0"),
    "QUANTIZE": ("1.14.0", "1.15.0", "2.7.0"),
    "RELU": ("1.5.0", "2.1.0", "2.5.0"),
    "RELU6": ("1.5.0", "1.14.0", "2.5.0"),
    "RESHAPE": ("1.5.0",),
    "RESIZE_BILINEAR": ("1.7.0", "1.14.0", "2.2.0", "2.5.0"),
    "RESIZE_NEAREST_NEIGHBOR": ("1.13.1", "1.14.0", "2.3.0", "2.4.0"),
    "SUB": ("1.6.0", "1.14.0", "2.3.0", "2.4.0", "2.4.0"),
    "TILE": ("1.10.1", "2.2.0", "2.8.0"),  # v3 = int8 (Keras 3's nearest UpSampling2D)
    "TRANSPOSE_CONV": ("1.9.0", "2.2.0", "2.3.0", "2.13.0", "2.15.0"),
}


def version_key(version: str) -> tuple[int, ...]:
    """'2.4.0' -> (2, 4, 0): compared number by number, like TFLite's CompareRuntimeVersion."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ExportError(f"{version!r} is not a dotted runtime version like 2.4.0") from None


def _flatbuffer_model(tflite_bytes: bytes):
    from ai_edge_litert import schema_py_generated as schema  # flatbuffers only; no TF import

    if len(tflite_bytes) < 8 or not schema.Model.ModelBufferHasIdentifier(tflite_bytes, 0):
        raise ExportError("not a TFLite flatbuffer (no TFL3 identifier)")
    return schema, schema.Model.GetRootAs(tflite_bytes, 0)


def min_runtime_version(tflite_bytes: bytes) -> str:
    """The model's `min_runtime_version` metadata as the converter wrote it ("" if absent)."""
    _, model = _flatbuffer_model(tflite_bytes)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"min_runtime_version":
            buffer = model.Buffers(entry.Buffer())
            data = bytes(buffer.DataAsNumpy()) if buffer.DataLength() else b""
            return data.rstrip(b"\0").decode("ascii", "replace")  # a NUL-padded 16-byte field
    return ""


def _op_names(schema) -> dict[int, str]:
    return {
        code: name
        for name, code in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }


def _op_code(names: dict[int, str], model, operator) -> tuple[str, int]:
    """(builtin op name, op version) of one flatbuffer operator."""
    code = model.OperatorCodes(operator.OpcodeIndex())
    # Codes above 127 live in builtin_code, older ones in the deprecated int8 field.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    return names.get(builtin, str(builtin)), code.Version()


def builtin_ops(tflite_bytes: bytes) -> list[tuple[str, int]]:
    """The (builtin op name, op version) pairs the model's operators use, sorted."""
    schema, model = _flatbuffer_model(tflite_bytes)
    names = _op_names(schema)
    found = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            found.add(_op_code(names, model, subgraph.Operators(o)))
    return sorted(found)


# Ops that only move pixels: the device wrapper's resizes to and from the working size.
EDGE_OPS = ("RESIZE_BILINEAR", "RESHAPE", "TRANSPOSE")


def edge_nodes(tflite_bytes: bytes) -> list[str]:
    """Output tensor names of the EDGE_OPS chains next to the float input and output.

    int8 conversion keeps them in float: quantizing the 480x640x3 input before the resize
    costs more than the resize itself, and an int8 depth map resized to 480x640 must be
    requantized on a linear 256-step grid, then dequantized again, slower than the float
    resize and coarse near the camera. In float they leave XNNPACK's one partition intact
    (QUANTIZE/DEQUANTIZE run in it).
    """
    schema, model = _flatbuffer_model(tflite_bytes)
    graph = model.Subgraphs(0)
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    names = _op_names(schema)
    kind = [_op_code(names, model, op)[0] for op in ops]
    producer = {int(t): i for i, op in enumerate(ops) for t in op.OutputsAsNumpy()}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        for t in op.InputsAsNumpy():
            consumers.setdefault(int(t), []).append(i)
    chain: list[int] = []
    for tensor in graph.InputsAsNumpy():  # forward from the input while one edge op reads it
        users = consumers.get(int(tensor), [])
        while len(users) == 1 and kind[users[0]] in EDGE_OPS and users[0] not in chain:
            chain.append(users[0])
            users = consumers.get(int(ops[users[0]].Outputs(0)), [])
    for tensor in graph.OutputsAsNumpy():  # backward from the output through edge ops
        i = producer.get(int(tensor))
        while i is not None and kind[i] in EDGE_OPS and i not in chain:
            chain.append(i)
            i = producer.get(int(ops[i].Inputs(0)))
    return [graph.Tensors(int(ops[i].Outputs(0))).Name().decode() for i in chain]


def delegation(tflite_bytes: bytes, *, threads: int = 1) -> dict:
    """How XNNPACK (LiteRT's default delegate) takes the model: the number of DELEGATE
    partitions, as `tflite_runner` counts them, and the ops it leaves to the builtin kernels.

    After delegation the interpreter still lists every original node, and the execution plan
    is not exposed: a node is delegated when it lies between a DELEGATE node's inputs and its
    outputs, so each partition is walked back from its outputs.
    """
    interp = load_interpreter(
        content=tflite_bytes, num_threads=threads, name="converted model", error=ExportError
    )
    ops = interp._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {
        int(t): op["index"] for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]
    }
    inside: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        todo = [int(t) for t in node["outputs"]]
        while todo:
            tensor = todo.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in inside:
                continue
            inside.add(index)
            todo.extend(int(t) for t in ops[index]["inputs"] if t >= 0)
    left: dict[str, int] = {}
    for op in ops:
        if op["op_name"] != "DELEGATE" and op["index"] not in inside:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return {
        "partitions": len(delegates),
        "nodes": len(ops) - len(delegates),
        "not_delegated": dict(sorted(left.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def op_min_runtime(op: str, version: int) -> str | None:
    """OP_MIN_RUNTIME's entry for one op version; None when the table does not know it."""
    versions = OP_MIN_RUNTIME.get(op, ())
    return versions[version - 1] if 1 <= version <= len(versions) else None


def ops_newer_than(ops, target: str) -> list[tuple[str, int, str]]:
    """(op, version, runtime) of the `builtin_ops` pairs that need a runtime newer than target."""
    newer = []
    for op, version in ops:
        runtime = op_min_runtime(op, version)
        if runtime and version_key(runtime) > version_key(target):
            newer.append((op, version, runtime))
    return newer


def model_min_runtime(tflite_bytes: bytes) -> str:
    """The oldest runtime that runs the model: its metadata, or OP_MIN_RUNTIME where newer."""
    known = [op_min_runtime(op, v) for op, v in builtin_ops(tflite_bytes)]
    candidates = [v for v in (min_runtime_version(tflite_bytes), *known) if v]
    return max(candidates, key=version_key) if candidates else ""


def _with_batch_one(model):
    """Rebuild `model` with a static batch of 1: the device graph has no dynamic dims."""
    import keras

    shape = tuple(model.inputs[0].shape)
    if len(model.inputs) != 1 or shape[0] == 1:
        return model
    if any(d is None for d in shape[1:]):
        raise ExportError(
            f"model input shape {shape} has unknown H/W/C; wrap it for the device size first"
        )
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


# Op types XNNPACK runs in float but not in int8. Quantized, each runs on the builtin kernels and
# cuts the graph out of the delegate (MobileNetV3's 18 hard-swishes: 19 partitions); kept in
# float between a DEQUANTIZE and a QUANTIZE, which XNNPACK runs too, the graph stays one partition.
XNNPACK_FLOAT_ONLY = ("HARD_SWISH",)


def _quantize(converter, target_runtime: str | None) -> bytes:
    """Full-integer quantization that keeps in float the device wrapper's resizes
    (`edge_nodes`), XNNPACK_FLOAT_ONLY and the op types whose int8 kernels are newer than
    target_runtime (EXP v2 needs 2.12.0, TILE v3 2.8.0): calibrate once, quantize, and quantize
    again with those types denylisted until none is left (requantizing takes ~0.1 s,
    calibration seconds). The QuantizationDebugger's denylists are TF's selective
    quantization; the rest is int8."""
    import tensorflow as tf

    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter)
    float_nodes = edge_nodes(debugger.calibrated_model)
    float_ops = list(XNNPACK_FLOAT_ONLY)
    while True:
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=float_ops, denylisted_nodes=float_nodes
        )
        flatbuffer = debugger.get_nondebug_quantized_model()
        if not target_runtime:
            return flatbuffer
        newer = sorted(
            {op for op, _, _ in ops_newer_than(builtin_ops(flatbuffer), target_runtime)}
            - set(float_ops)
        )
        if not newer:  # all old enough, or an op that stays new in float: export's check names it
            return flatbuffer
        float_ops += newer


def convert(
    keras_model, *, precision: str, representative=None, target_runtime: str | None = TARGET_RUNTIME
) -> bytes:
    """Keras model -> TFLite flatbuffer bytes, builtin ops only.

    precision: fp32 | fp16 (fp16 weights, fp32 compute) | dynamic_int8 (int8 weights,
    dynamic-range activations) | int8 (full integer; needs `representative`, keeps
    float32 input/output so the model stays a drop-in for the fp32 one). int8 keeps in
    float the resizes at the graph's edges and the ops whose int8 kernels `target_runtime`
    lacks (None: no runtime limit);
    whether the result runs there is the caller's check (`model_min_runtime`).
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "int8" and representative is None:
        raise ExportError("precision int8 needs representative images for calibration")
    if target_runtime:
        version_key(target_runtime)  # a bad version fails here, not after the conversion
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
            if precision == "int8":
                flatbuffer = _quantize(converter, target_runtime)
            else:
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
                f"model needs non-builtin TF ops: {', '.join(ops)}; the device runtime has builtin "
                "ops only",
                text,
            ) from None
        raise ExportError(
            f"TFLite conversion ({precision}) failed: {_first_error_line(text)}", text
        ) from None
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
    interp = load_interpreter(
        content=tflite_bytes, delegates=False, name="converted model", error=ExportError
    )
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
        return [
            {"shape": [int(d) for d in d_["shape"]], "dtype": np.dtype(d_["dtype"]).name}
            for d_ in details
        ]

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
        interp = load_interpreter(
            content=tflite_bytes, num_threads=threads, name="converted model", error=ExportError
        )
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for image in np.asarray(images, dtype=np.float32):
        interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interp.invoke()
        results.append(np.array(interp.get_tensor(out["index"]))[0])
    return np.stack(results).astype(np.float32)
