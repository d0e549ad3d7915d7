"""litedepth: MobileNetV3-small encoder at a low internal resolution (128x160 by default),
with a very light decoder: 1x1-projected additive skips and one separable conv per level,
after the 2022 winner "LiteDepth"."""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.config import TrainConfig
from pipeline.model.networks.encoders import keras_encoder
from pipeline.model.networks.layers import (
    conv_bn_relu,
    depth_head,
    sepconv_bn_relu,
    upsample,
)


def build(cfg: TrainConfig) -> keras.Model:
    rgb = keras.Input((cfg.height, cfg.width, 3), name="rgb")
    skips = keras_encoder("mobilenet_v3_small", cfg, rgb)
    c = max(cfg.decoder_channels // 2, 8)
    x = conv_bn_relu(skips[32], 2 * c, 1, name="reduce32")
    for stride in (16, 8, 4, 2):
        x = upsample(x, name=f"up{stride}")
        skip = conv_bn_relu(skips[stride], x.shape[-1], 1, name=f"proj{stride}")
        x = layers.Add(name=f"fuse{stride}")([x, skip])
        x = sepconv_bn_relu(x, c if stride <= 4 else 2 * c, name=f"dec{stride}")
    x = upsample(x, name="up1")
    return keras.Model(rgb, depth_head(x, cfg), name="litedepth")
