"""fastdepth: MobileNet (v1) encoder + NNConv5 decoder with additive skips (Wofk et al. 2019)."""

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
    skips = keras_encoder("mobilenet_v1", cfg, rgb)
    x = skips[32]
    # NNConv5: 5x5 depthwise-separable conv then nearest-neighbour x2, five times; skips
    # are added (not concatenated), so each block first matches the skip's channels.
    for stride in (16, 8, 4, 2):
        x = sepconv_bn_relu(x, skips[stride].shape[-1], kernel=5, name=f"nnconv{stride}")
        x = upsample(x, name=f"up{stride}", interpolation="nearest")
        x = layers.Add(name=f"skip{stride}")([x, skips[stride]])
    x = sepconv_bn_relu(x, max(cfg.decoder_channels, 8), kernel=5, name="nnconv1")
    x = upsample(x, name="up1", interpolation="nearest")
    x = conv_bn_relu(x, max(cfg.decoder_channels // 2, 8), 1, name="pointwise_out")
    return keras.Model(rgb, depth_head(x, cfg), name="fastdepth")
