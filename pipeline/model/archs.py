"""The architectures `train.arch` names, as plain data: no TensorFlow here, so that every
stage checks its params against them (pipeline.core.config.register_archs). Here, not in
networks/, whose package code would then be a dependency of every stage.

Adding an architecture is a module pipeline/model/networks/MODULE.py with
`build(cfg: TrainConfig) -> keras.Model` (N x H x W x 3 RGB 0..255 in, N x H x W x 1 metres
out, standard Keras layers only) and one line in ARCHS.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import ArchFacts, register_archs

# Arch.encoder: the encoder is the one train.encoder names
ENCODER_KNOB = "train.encoder"


@dataclass(frozen=True, kw_only=True)
class Arch(ArchFacts):
    module: str  # its builder: pipeline/model/networks/<module>.py, build(cfg) -> keras.Model
    # What the readme, the MLflow run and the fact sheet say of it (pipeline/results/describe.py):
    about: str  # its decoder (or whole network, without an encoder) in a few words
    decoder_channels: bool = True  # train.decoder_channels sizes its decoder
    bounded: bool = True  # depth head: exp of a sigmoid-bounded log depth; False: a plain ReLU


# `auto` in train.width_multiplier / height / width: MobileNet alpha 0.35 at 128x160
SMALL = {"width_multiplier": 0.35, "height": 128, "width": 160}

ARCHS = {
    "mobile_unet": Arch(
        module="mobile_unet",
        stride=32,
        auto=SMALL,
        encoder=ENCODER_KNOB,
        about="light U-Net decoder with concatenated skips",
    ),
    # the organizers' own size: 64 base filters (64 x width_multiplier) at 240x320
    "mai_baseline_unet": Arch(
        module="baseline_unet",
        stride=16,
        auto={"width_multiplier": 1.0, "height": 240, "width": 320},
        about="the organizers' baseline U-Net (double 3x3 convs from 64 base "
        "filters, transposed convs, concatenated skips)",
        decoder_channels=False,
        bounded=False,
    ),
    "fastdepth": Arch(
        module="fastdepth",
        stride=32,
        auto=SMALL,
        encoder="mobilenet_v1",
        about="NNConv5 decoder with additive skips (FastDepth)",
    ),
    "litedepth": Arch(
        module="litedepth",
        stride=32,
        auto=SMALL,
        encoder="mobilenet_v3_small",
        about="very light decoder with 1x1-projected additive skips (after LiteDepth)",
    ),
}
register_archs(ARCHS)
