"""mai_baseline_unet: the organizers' baseline U-Net, layer for layer (MAI 2021 workshop
repository, depth_estimation/model.py).

RGB / 255, then double 3x3 conv + ReLU blocks (with bias, no batch norm) of 64, 128, 256,
512 filters with 2x2 max pooling, a 1024-filter bottleneck, 2x2 stride-2 transposed convs
with concatenated skips, and a final 3x3 conv with ReLU: depth in metres, unbounded above
and 0 possible, exactly as theirs (train.min_depth/max_depth do not apply). At its own
defaults (train.width_multiplier 1.0 at 240x320) it is their model, about 56 GMACs; the
bilinear resizes to and from 480x640 come from `wrap_for_device`.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.config import TrainConfig

BASE_FILTERS = 64  # the organizers' base_filters; train.width_multiplier scales it


def double_conv(x, filters: int, name: str):
    for suffix in ("a", "b"):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}{suffix}")(x)
    return x


def build(cfg: TrainConfig) -> keras.Model:
    rgb = keras.Input((cfg.height, cfg.width, 3), name="rgb")
    x = layers.Rescaling(1 / 255.0, name="to_unit_range")(rgb)
    base = max(round(BASE_FILTERS * cfg.width_multiplier), 1)
    widths = [base, 2 * base, 4 * base, 8 * base]
    skips = []
    for level, filters in enumerate(widths):
        x = double_conv(x, filters, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = double_conv(x, 16 * base, name="bottleneck")
    for level in reversed(range(len(widths))):
        x = layers.Conv2DTranspose(widths[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = double_conv(x, widths[level], name=f"dec{level}")
    depth = layers.Conv2D(1, 3, padding="same", activation="relu", dtype="float32", name="depth")(x)
    return keras.Model(rgb, depth, name="mai_baseline_unet")
