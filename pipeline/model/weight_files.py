"""Weights files as users have them, read without TensorFlow: a TFLite classifier's flatbuffer
(its CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops in execution order, each kernel
dequantized from int8 per channel, uint8, fp16 or fp32 and brought to Keras' layout) and a
Keras weights .h5 (the legacy format keras.applications downloads, or Keras 3's
.weights.h5). pipeline/model/pretrained.py puts what they hold into an encoder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError

TFLITE_SUFFIX = ".tflite"  # else a Keras .h5: the legacy one or Keras 3's .weights.h5


@dataclass
class FileConv:
    """One conv (or dense) layer read from a weights file, in Keras' layout."""

    name: str
    kind: str  # conv | depthwise | dense
    kernel: np.ndarray  # Conv2D: H,W,I,O; DepthwiseConv2D: H,W,C,M; Dense: I,O
    bias: np.ndarray | None
    activation: str = "linear"  # the fused activation of a TFLite op (classifier heads)
    then: str = ""  # the op that follows it (HARD_SWISH after a V3 head conv)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: train.encoder_weights file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: train.encoder_weights file is empty (0 bytes)")


# ----------------------------------------------------------------------------- TFLite files
def _tflite_model(path: Path):
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise DataError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        graph = model.Subgraphs(0)
    except Exception as err:  # a truncated flatbuffer raises whatever the reader hit
        raise DataError(f"{path}: cannot read the TFLite model ({type(err).__name__})") from None
    return schema, data, model, graph


def _tensor_array(schema, data: bytes, model, graph, index: int) -> np.ndarray | None:
    """A constant tensor's values as float32 (dequantized), or None if it holds no data."""
    tensor = graph.Tensors(index)
    buffer = model.Buffers(tensor.Buffer())
    if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
        raw = np.frombuffer(data, np.uint8, buffer.Size(), buffer.Offset())
    else:
        raw = buffer.DataAsNumpy()
        if not isinstance(raw, np.ndarray) or raw.size == 0:
            return None
    types = schema.TensorType
    dtype = {
        types.FLOAT32: np.float32,
        types.FLOAT16: np.float16,
        types.INT32: np.int32,
        types.UINT8: np.uint8,
        types.INT8: np.int8,
    }.get(tensor.Type())
    if dtype is None:
        return None
    shape = tuple(tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    values = raw.view(dtype).reshape(shape).astype(np.float32)
    quant = tensor.Quantization()
    if quant is not None and quant.ScaleLength() and dtype not in (np.float32, np.float16):
        scale = quant.ScaleAsNumpy().astype(np.float32)
        zero = (
            quant.ZeroPointAsNumpy().astype(np.float32)
            if quant.ZeroPointLength()
            else np.zeros_like(scale)
        )
        axis = quant.QuantizedDimension() if scale.size > 1 else None
        if axis is not None:
            view = [1] * values.ndim
            view[axis] = scale.size
            scale, zero = scale.reshape(view), zero.reshape(view)
        values = (values - zero) * scale
    return values


def _activation(schema, op) -> str:
    names = {
        schema.ActivationFunctionType.NONE: "linear",
        schema.ActivationFunctionType.RELU: "relu",
        schema.ActivationFunctionType.RELU6: "relu6",
    }
    table = op.BuiltinOptions()
    if table is None:
        return "linear"
    options = {
        schema.BuiltinOptions.Conv2DOptions: schema.Conv2DOptions,
        schema.BuiltinOptions.DepthwiseConv2DOptions: schema.DepthwiseConv2DOptions,
        schema.BuiltinOptions.FullyConnectedOptions: schema.FullyConnectedOptions,
    }.get(op.BuiltinOptionsType())
    if options is None:
        return "linear"
    parsed = options()
    parsed.Init(table.Bytes, table.Pos)
    return names.get(parsed.FusedActivationFunction(), "linear")


def read_tflite(path: Path) -> tuple[list[FileConv], list[str]]:
    """The file's conv, depthwise and dense layers in execution order, and the op names of
    the whole graph in order (so a caller can tell what follows a layer)."""
    schema, data, model, graph = _tflite_model(path)
    ops = schema.BuiltinOperator
    names = {v: k for k, v in vars(ops).items() if not k.startswith("_")}
    kinds = {ops.CONV_2D: "conv", ops.DEPTHWISE_CONV_2D: "depthwise", ops.FULLY_CONNECTED: "dense"}
    # fp16 models feed their weights through DEQUANTIZE ops: output tensor -> its input
    producers = {}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
    layers, order = [], []
    try:
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = codes[op.OpcodeIndex()]
            order.append(names.get(code, str(code)))
            if code == ops.DEQUANTIZE:
                producers[int(op.Outputs(0))] = int(op.Inputs(0))
            if code not in kinds:
                continue
            inputs = [int(x) for x in op.InputsAsNumpy()]

            def const(index):
                if index < 0:
                    return None
                value = _tensor_array(schema, data, model, graph, index)
                if value is None and index in producers:
                    value = _tensor_array(schema, data, model, graph, producers[index])
                return value

            weights = const(inputs[1])
            bias = const(inputs[2]) if len(inputs) > 2 else None
            if weights is None:
                raise DataError(
                    f"{path}: op {i} ({order[-1]}) has no constant weights; only classifiers "
                    "with their weights inside the file can start an encoder"
                )
            kind = kinds[code]
            if kind == "conv":  # O,H,W,I -> H,W,I,O
                kernel = weights.transpose(1, 2, 3, 0)
            elif kind == "depthwise":  # 1,H,W,C*M -> H,W,C,M (depth multiplier M = 1 here)
                kernel = weights.reshape(weights.shape[1], weights.shape[2], -1, 1)
            else:  # O,I -> I,O
                kernel = weights.T
            # a fused tensor name lists several ops, the weights' own first
            name = graph.Tensors(inputs[1]).Name().decode(errors="replace").split(";")[0]
            layers.append(FileConv(name, kind, kernel, bias, _activation(schema, op)))
            if i + 1 < graph.OperatorsLength():
                layers[-1].then = names.get(codes[graph.Operators(i + 1).OpcodeIndex()], "")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot read the TFLite model ({type(err).__name__})") from None
    return layers, order


# ----------------------------------------------------------------------------- Keras files
def read_keras_h5(path: Path) -> tuple[str, list[tuple[str, list[np.ndarray]]]]:
    """('legacy' | 'keras3', [(layer name, its arrays)]) of a Keras weights file: the legacy
    format in its layer order; Keras 3's in the file's order (matched by name)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs:
                found = []
                for name in f.attrs["layer_names"]:
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    group = f[name]
                    weight_names = [
                        w.decode() if isinstance(w, bytes) else str(w)
                        for w in group.attrs.get("weight_names", [])
                    ]
                    if weight_names:
                        found.append((name, [np.asarray(group[w]) for w in weight_names]))
                return "legacy", found
            if "layers" in f:
                found = []

                def visit(name, obj):
                    if isinstance(obj, h5py.Group) and name.endswith("/vars") and len(obj):
                        arrays = [np.asarray(obj[k]) for k in sorted(obj, key=int)]
                        found.append((name.split("/")[-2], arrays))

                f["layers"].visititems(visit)
                return "keras3", found
    except OSError:
        raise DataError(f"{path}: not an HDF5 file (a Keras weights file is one)") from None
    raise DataError(f"{path}: an HDF5 file without Keras weights (no layer_names, no layers/)")


# ----------------------------------------------------------------------------- running one
def tflite_input(path: str, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 RGB image at the TFLite classifier's input size -> (what its input tensor gets,
    the real values that stands for), by the input's quantization."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.uint8:
        q = rgb.astype(np.uint8)
    elif detail["dtype"] == np.int8:
        q = (rgb.astype(np.int16) - 128).astype(np.int8)
    else:
        raise DataError(f"{path}: the check takes a quantized classifier (uint8 or int8 input)")
    return q[None], ((q.astype(np.float32) - zero) * scale)[None]


def tflite_logits(path: str, q: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], q)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    values = interpreter.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    return ((values - zero) * scale if scale else values).reshape(-1)
