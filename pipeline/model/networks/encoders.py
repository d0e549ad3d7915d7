"""The encoders `train.encoder` names: keras.applications backbones, and MobileNetV2 as DeepLab
builds it below width 1.0. Each is wrapped as one nested model, `<kind>_encoder`, that returns
its last feature map at every stride 2..32 (the decoders' skips).

keras.applications rounds every MobileNetV2 channel count to a multiple of 8; DeepLab's
MobileNetV2 at depth multiplier 0.5 does not (24 x 0.5 = 12 channels, not 16), and ends at its
last block, without the 1x1 conv to 1280 channels in front of a classifier. So the DeepLab file
(`deeplabv3_mnv2_dm05_pascal_quant.tflite`) fits `mobilenet_v2_deeplab`, and no
keras.applications width.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.config import ENCODERS, TrainConfig

SKIP_STRIDES = (2, 4, 8, 16, 32)
ENCODER_SUFFIX = "_encoder"  # the nested model keras_encoder makes is named <kind>_encoder

# train.encoder -> (keras.applications constructor, or "" for our own builder; whether the
# network rescales 0..255 input itself)
BUILDERS = {
    "mobilenet_v2": ("MobileNetV2", False),
    "mobilenet_v1": ("MobileNet", False),
    "mobilenet_v3_small": ("MobileNetV3Small", True),
    "mobilenet_v3_large": ("MobileNetV3Large", True),
    "mobilenet_v2_deeplab": ("", False),
}
assert tuple(BUILDERS) == ENCODERS, "pipeline.core.config.ENCODERS names these, in this order"


def encoder_skips(encoder: keras.Model, height: int, width: int) -> dict[int, keras.KerasTensor]:
    """The last encoder tensor at each stride 2..32, found by shape, not by layer name.

    keras.applications layer names differ between versions and between builds in one
    session (activation_17 vs activation_35); the output shapes do not.
    """
    found = {}
    for layer in encoder.layers:
        shape = layer.output.shape
        if len(shape) != 4:
            continue
        for stride in SKIP_STRIDES:
            if shape[1] == height // stride and shape[2] == width // stride:
                found[stride] = layer.output
    missing = [s for s in SKIP_STRIDES if s not in found]
    if missing:
        raise ValueError(f"encoder {encoder.name} has no feature map at strides {missing}")
    return found


def encoder_input(kind: str, rgb):
    """0..255 RGB -> what the encoder `kind` takes (-1..1 for V1/V2; V3 rescales 0..255
    itself): the one place that knows, for the graph and for a batch-norm refit."""
    if BUILDERS[kind][1]:
        return rgb
    if isinstance(rgb, keras.KerasTensor):
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(rgb)
    return rgb / 127.5 - 1.0


def keras_encoder(kind: str, cfg: TrainConfig, inputs):
    """The encoder `kind` on 0..255 RGB input, with its own preprocessing; ImageNet weights when
    train.encoder_weights is `imagenet` (a weights file is loaded by pipeline.model.pretrained
    once the model is built)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown encoder {kind!r}")
    shape = (cfg.height, cfg.width, 3)
    ctor, rescales = BUILDERS[kind]
    if not ctor:
        if cfg.encoder_weights == "imagenet":
            raise ValueError(f"{kind} has no keras.applications ImageNet weights: give a file")
        base = deeplab_mobilenet_v2(shape, cfg.width_multiplier)
    else:
        extra = {"include_preprocessing": True} if rescales else {}
        base = getattr(keras.applications, ctor)(
            input_shape=shape,
            include_top=False,
            weights="imagenet" if cfg.encoder_weights == "imagenet" else None,
            alpha=cfg.width_multiplier,
            **extra,
        )
    skips = encoder_skips(base, cfg.height, cfg.width)
    # One functional model exposing every skip, applied to the (rescaled) input.
    multi = keras.Model(
        base.inputs, [skips[s] for s in SKIP_STRIDES], name=f"{kind}{ENCODER_SUFFIX}"
    )
    return dict(zip(SKIP_STRIDES, multi(encoder_input(kind, inputs))))


# MobileNetV2's inverted residual blocks: (expansion, output channels at width 1, stride)
V2_BLOCKS = (
    [(1, 16, 1)]
    + [(6, 24, 2), (6, 24, 1)]
    + [(6, 32, 2)]
    + [(6, 32, 1)] * 2
    + [(6, 64, 2)]
    + [(6, 64, 1)] * 3
    + [(6, 96, 1)] * 3
    + [(6, 160, 2)]
    + [(6, 160, 1)] * 2
    + [(6, 320, 1)]
)


def deeplab_mobilenet_v2(shape, alpha: float) -> keras.Model:
    """MobileNetV2 with DeepLab's channels below width 1.0: each block's output is round(alpha x
    its width-1 channels), at least 8, not rounded to a multiple of 8; expansions are 6x the
    input rounded to a multiple of 8; no final 1x1 conv. Layer names and order are
    keras.applications' (Conv1, block_N_expand, ...), so one loader fits both."""

    def channels(v):  # slim's _make_divisible(v, 1, min_value=8)
        return max(8, int(v + 0.5))

    def eight(v):  # slim's _make_divisible(v, 8)
        rounded = max(8, int(v + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * v else rounded

    rgb = keras.Input(shape)
    x = layers.Conv2D(
        channels(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1"
    )(rgb)
    x = layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    for block_id, (expansion, filters, stride) in enumerate(V2_BLOCKS):
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        inputs, in_channels = x, x.shape[-1]
        if expansion > 1:
            x = layers.Conv2D(
                eight(in_channels * expansion), 1, use_bias=False, name=f"{prefix}expand"
            )(x)
            x = layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=f"{prefix}expand_BN")(
                x
            )
            x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
        if stride == 2:  # TensorFlow's "same": one row and column after, and before if odd
            odd_h, odd_w = x.shape[1] % 2, x.shape[2] % 2
            x = layers.ZeroPadding2D(((odd_h, 1), (odd_w, 1)), name=f"{prefix}pad")(x)
        x = layers.DepthwiseConv2D(
            3,
            strides=stride,
            use_bias=False,
            padding="same" if stride == 1 else "valid",
            name=f"{prefix}depthwise",
        )(x)
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=f"{prefix}depthwise_BN")(x)
        x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
        out = channels(filters * alpha)
        x = layers.Conv2D(out, 1, use_bias=False, name=f"{prefix}project")(x)
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=f"{prefix}project_BN")(x)
        if in_channels == out and stride == 1:
            x = layers.Add(name=f"{prefix}add")([inputs, x])
    return keras.Model(rgb, x, name=f"deeplab_mobilenetv2_{alpha}")
