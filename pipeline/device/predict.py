"""Run the exported TFLite depth model on RGB images of any size (LiteRT, no TensorFlow).

The model takes 1xHxWx3 float32 RGB in 0..255 and returns 1xHxWx1 float32 metres at
its fixed input size (480x640 for the challenge). Images of another size are resized
to it and the depth is resized back, so outputs always match the input image's size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import DataError
from pipeline.device.litert import load_interpreter


def resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of HxWx3 uint8 or HxW float32 with PIL; a no-op at the same size."""
    if arr.shape[:2] == (height, width):
        return arr
    if arr.ndim == 2:
        img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))  # mode "F"
        return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BILINEAR))


class TFLiteDepthModel:
    """`TFLiteDepthModel("models/model.tflite").predict(rgb_uint8) -> HxW float32 metres`."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = Path(path)
        self._interp = load_interpreter(path=self.path, num_threads=num_threads)
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise DataError(
                f"{self.path}: expected 1 input and 1 output tensor, found {len(inputs)} and "
                f"{len(outputs)}"
            )
        self._in, self._out = inputs[0], outputs[0]
        shape = tuple(int(s) for s in self._in["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise DataError(f"{self.path}: input shape {list(shape)} is not 1xHxWx3")
        self.input_size = (shape[1], shape[2])  # (height, width), read from the model itself

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self._in["quantization"]
        if scale:  # integer input tensor: real = scale * (q - zero)
            x = np.rint(x / scale + zero)
        info = np.iinfo(dtype)
        return np.clip(x, info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if y.dtype == np.float32:
            return y
        scale, zero = self._out["quantization"]
        y = y.astype(np.float32)
        return (y - zero) * scale if scale else y

    def predict(self, rgb: np.ndarray, *, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """HxWx3 uint8 RGB of any size -> HxW float32 metres at the input's size (or out_size)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"predict needs an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        h, w = self.input_size
        x = resize(rgb, h, w).astype(np.float32)[None]
        self._interp.set_tensor(self._in["index"], self._quantize(x))
        self._interp.invoke()
        y = self._dequantize(self._interp.get_tensor(self._out["index"]))
        y = np.squeeze(y)
        if y.shape != (h, w):
            raise DataError(
                f"{self.path}: output shape {list(self._out['shape'])} is not 1x{h}x{w}x1"
            )
        out_h, out_w = out_size or rgb.shape[:2]
        return resize(np.ascontiguousarray(y, dtype=np.float32), out_h, out_w)
