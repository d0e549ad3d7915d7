"""mobile_unet: MobileNetV2/V3 encoder + light U-Net decoder with concatenated skips (default)."""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.config import TrainConfig
from pipeline.model.networks.encoders import keras_encoder
from pipeline.model.networks.layers import depth_head, sepconv_bn_relu, upsample


def build(cfg: TrainConfig) -> keras.Model:
    rgb = keras.Input((cfg.height, cfg.width, 3), name="rgb")
    skips = keras_encoder(cfg.encoder, cfg, rgb)
    c = cfg.decoder_channels
    x = skips[32]
    # Channels shrink towards full resolution, where every multiply costs the most.
    for stride, filters in ((16, 4 * c), (8, 2 * c), (4, c), (2, c)):
        x = upsample(x, name=f"up{stride}")
        x = layers.Concatenate(name=f"skip{stride}")([x, skips[stride]])
        x = sepconv_bn_relu(x, filters, name=f"dec{stride}")
    x = upsample(x, name="up1")
    x = sepconv_bn_relu(x, max(c // 2, 8), name="dec1")
    return keras.Model(rgb, depth_head(x, cfg), name="mobile_unet")
