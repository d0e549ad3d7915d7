"""A teacher model file as published: TFLite (LiteRT), Keras (`.keras`) or ONNX (onnxruntime).

`TeacherModel(cfg).predict(rgb_uint8) -> HxW float32` runs it at its own input size (or
teacher.height x teacher.width), with its own input normalization (teacher.normalize), and
returns the raw map of output `teacher.output_index` at the image's size. Published models
often have several outputs (PyDNet: three scales, the finest first); a wrong index is a
one-line error that lists them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.config import TeacherConfig
from pipeline.core.errors import DataError
from pipeline.core.host import usable_cpus
from pipeline.device.predict import resize

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(rgb: np.ndarray, how: str) -> np.ndarray:
    """float32 RGB 0..255 -> what the teacher's input expects (teacher.normalize)."""
    if how == "none":
        return rgb
    if how == "unit":
        return rgb / 255.0
    if how == "half":
        return rgb / 127.5 - 1.0
    return (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # imagenet


def _input_size(path: Path, dims, cfg: TeacherConfig) -> tuple[int, int]:
    """The size the teacher runs at: its own fixed input size, or teacher.height/width."""
    fixed = all(isinstance(d, int) and d > 0 for d in dims)
    if cfg.height:
        if fixed and tuple(dims) != (cfg.height, cfg.width):
            raise DataError(
                f"{path}: teacher.height/width {cfg.height}x{cfg.width} differ from the "
                f"model's fixed input {dims[0]}x{dims[1]}; set both to 0"
            )
        return cfg.height, cfg.width
    if not fixed:
        raise DataError(
            f"{path}: the model's input size is not fixed ({dims}); "
            "set teacher.height and teacher.width"
        )
    return int(dims[0]), int(dims[1])


def _pick_output(path: Path, outputs: list[tuple[str, object]], index: int) -> int:
    """`index` when the model has that output, else a one-line error listing them all."""
    if index >= len(outputs):
        listed = ", ".join(f"{i}: {name} {shape}" for i, (name, shape) in enumerate(outputs))
        raise DataError(
            f"{path}: teacher.output_index={index}, but the model has "
            f"{len(outputs)} output(s): {listed}"
        )
    return index


class TeacherModel:
    """`TeacherModel(cfg).predict(rgb_uint8) -> HxW float32`: the raw output at the image's size."""

    def __init__(self, cfg: TeacherConfig, num_threads: int | None = None):
        self.cfg, self.path = cfg, Path(cfg.model)
        if not self.path.is_file():
            raise DataError(f"{self.path}: teacher model file not found (teacher.model)")
        self.channels_first = False
        loader = {
            ".tflite": self._load_tflite,
            ".keras": self._load_keras,
            ".onnx": self._load_onnx,
        }
        loader[self.path.suffix](num_threads or usable_cpus())

    def _load_tflite(self, threads):
        from pipeline.device.litert import load_interpreter

        self._interp = load_interpreter(path=self.path, num_threads=threads)
        inp, outs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inp) != 1 or inp[0]["dtype"] != np.float32:
            raise DataError(
                f"{self.path}: a teacher needs one float32 image input, found "
                f"{[(i['name'], i['shape'].tolist(), i['dtype'].__name__) for i in inp]}"
            )
        out = outs[
            _pick_output(
                self.path, [(o["name"], o["shape"].tolist()) for o in outs], self.cfg.output_index
            )
        ]
        self._in, self._out = inp[0]["index"], out["index"]
        signature = inp[0].get("shape_signature", inp[0]["shape"])  # -1 = a dynamic dimension
        self.size = _input_size(self.path, [max(int(d), 0) for d in signature[1:3]], self.cfg)
        if tuple(inp[0]["shape"][1:3]) != self.size:
            self._interp.resize_tensor_input(self._in, [1, *self.size, 3])
            self._interp.allocate_tensors()

        def run(x):
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            return self._interp.get_tensor(self._out)

        self._run = run

    def _load_keras(self, threads):
        from pipeline.model.networks import load_keras_model

        model = load_keras_model(self.path, missing="teacher model file not found (teacher.model)")
        shape = model.input_shape
        if len(shape) != 4 or shape[-1] != 3:
            raise DataError(
                f"{self.path}: a teacher takes N x H x W x 3 RGB, this model takes {shape}"
            )
        self.size = _input_size(self.path, [d or 0 for d in shape[1:3]], self.cfg)
        index = _pick_output(
            self.path, [(t.name, tuple(t.shape)) for t in model.outputs], self.cfg.output_index
        )
        many = len(model.outputs) > 1
        self._run = lambda x: np.asarray(
            model(x, training=False)[index] if many else model(x, training=False)
        )

    def _load_onnx(self, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        try:
            session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own types with multi-line text
            first = str(err).strip().splitlines()[0][:200]
            raise DataError(f"{self.path}: cannot load ONNX model ({first})") from None
        inp = session.get_inputs()
        if len(inp) != 1 or inp[0].type != "tensor(float)" or len(inp[0].shape) != 4:
            raise DataError(
                f"{self.path}: a teacher needs one float32 image input, found "
                f"{[(i.name, i.type, i.shape) for i in inp]}"
            )
        shape = inp[0].shape
        self.channels_first = shape[1] == 3  # NCHW, as most exported PyTorch models
        if not self.channels_first and shape[3] != 3:
            raise DataError(
                f"{self.path}: input {shape} is neither N x 3 x H x W nor N x H x W x 3"
            )
        dims = shape[2:4] if self.channels_first else shape[1:3]
        self.size = _input_size(self.path, [d if isinstance(d, int) else 0 for d in dims], self.cfg)
        outs = session.get_outputs()
        output = outs[
            _pick_output(self.path, [(o.name, o.shape) for o in outs], self.cfg.output_index)
        ].name
        name = inp[0].name
        self._run = lambda x: session.run([output], {name: x})[0]

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        x = normalize(resize(rgb, *self.size).astype(np.float32), self.cfg.normalize)[None]
        if self.channels_first:
            x = x.transpose(0, 3, 1, 2)
        out = np.squeeze(
            np.asarray(self._run(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
        )
        if out.ndim != 2:
            raise DataError(
                f"{self.path}: teacher output {self.cfg.output_index} has shape {out.shape}; "
                "expected one H x W map"
            )
        return resize(out, height, width)
