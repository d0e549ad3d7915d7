"""mai_baseline_unet: the organizers' plain U-Net (full convs, 4 poolings), meant for 240x320."""

from __future__ import annotations

import keras
from keras import layers

from pipeline.config import TrainConfig
from pipeline.models.registry import register
from pipeline.models.layers import conv_bn_relu, depth_head


@register("mai_baseline_unet")
def build(cfg: TrainConfig) -> keras.Model:
    rgb = keras.Input((cfg.height, cfg.width, 3), name="rgb")
    x = layers.Rescaling(1 / 255.0, name="to_unit_range")(rgb)
    base = max(int(16 * cfg.width_multiplier), 4)
    widths = [base, 2 * base, 4 * base, 8 * base]
    skips = []
    for level, filters in enumerate(widths):
        x = conv_bn_relu(x, filters, name=f"enc{level}a")
        x = conv_bn_relu(x, filters, name=f"enc{level}b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = conv_bn_relu(x, 16 * base, name="bottleneck_a")
    x = conv_bn_relu(x, 16 * base, name="bottleneck_b")
    for level in reversed(range(len(widths))):
        x = layers.Conv2DTranspose(widths[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_bn_relu(x, widths[level], name=f"dec{level}a")
        x = conv_bn_relu(x, widths[level], name=f"dec{level}b")
    return keras.Model(rgb, depth_head(x, cfg), name="mai_baseline_unet")
