"""Building blocks shared by the architectures (standard Keras layers only)."""

from __future__ import annotations

import math

from keras import layers

from pipeline.core.config import TrainConfig


def depth_head(x, cfg: TrainConfig, name: str = "depth"):
    """Positive metres in [min_depth, max_depth]: exp of a sigmoid-bounded log depth.

    Bounded in log space so the network starts at the geometric mean of the range and
    never emits 0 or inf; all three ops are TFLite builtins (LOGISTIC, MUL/ADD, EXP).
    Float32 under any mixed-precision policy: in float16 the log depth would keep ~3
    digits, a 0.5% step in metres (under the float32 default this changes nothing).
    """
    lo, hi = math.log(cfg.min_depth), math.log(cfg.max_depth)
    x = layers.Conv2D(1, 3, padding="same", dtype="float32", name=f"{name}_logits")(x)
    x = layers.Activation("sigmoid", dtype="float32", name=f"{name}_unit")(x)
    x = layers.Rescaling(scale=hi - lo, offset=lo, dtype="float32", name=f"{name}_log")(x)
    return layers.Activation("exponential", dtype="float32", name=name)(x)


def conv_bn_relu(x, filters: int, kernel: int = 3, name: str = ""):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def sepconv_bn_relu(x, filters: int, kernel: int = 3, name: str = ""):
    """Depthwise + pointwise conv: the cheap decoder block of mobile depth models."""
    x = layers.DepthwiseConv2D(kernel, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    return conv_bn_relu(x, filters, 1, name=f"{name}_pw")


def upsample(x, name: str, interpolation: str = "bilinear"):
    if interpolation == "nearest":
        return nearest_x2(x, name)
    return layers.UpSampling2D(2, interpolation=interpolation, name=name)(x)


def nearest_x2(x, name: str):
    """Nearest-neighbour x2, the values of UpSampling2D(interpolation="nearest"), as two
    concatenations and reshapes. Keras 3 lowers UpSampling2D's nearest mode to RESHAPE + TILE,
    and XNNPACK runs no TILE: each one cut the graph out of the delegate (fastdepth: 11
    partitions), and int8 TILE needs TFLite 2.8. RESIZE_NEAREST_NEIGHBOR is no way out either:
    XNNPACK does not take it."""
    _, h, w, c = x.shape
    x = layers.Concatenate(axis=-1, name=f"{name}_cols")([x, x])  # each pixel twice along channels,
    x = layers.Reshape((h, 2 * w, c), name=f"{name}_cols_x2")(x)  # = twice along the row
    x = layers.Concatenate(axis=2, name=f"{name}_rows")([x, x])  # each row twice, side by side,
    return layers.Reshape((2 * h, 2 * w, c), name=name)(x)  # = twice down the column


def separable_resize(x, height: int, width: int, name: str):
    """Bilinear resize of a 1-channel map to height x width, columns then rows: the same values
    as one Resizing(height, width) (bilinear is separable), for about a quarter of the time.

    XNNPACK's RESIZE_BILINEAR loops over output pixels and vectorizes over channels, so one
    channel at 480x640 is its slowest case (~0.8 ms here). With the other axis moved into the
    channels (TRANSPOSE of the small map), each pass is few pixels times many channels.
    """
    _, h, w, c = x.shape
    if c != 1:
        raise ValueError(f"separable_resize takes a 1-channel map, got {c} channels")
    x = layers.Permute((3, 2, 1), name=f"{name}_cols_first")(x)  # 1 x w x h: rows in the channels
    x = layers.Resizing(1, width, interpolation="bilinear", name=f"{name}_cols")(x)  # 1 x width x h
    x = layers.Permute((3, 1, 2), name=f"{name}_rows_first")(x)  # h x 1 x width
    x = layers.Resizing(height, 1, interpolation="bilinear", name=f"{name}_rows")(
        x
    )  # height x 1 x width
    return layers.Reshape((height, width, 1), name=name)(x)
