"""What a run's method is, in words: the one describer behind the readme's description
(pipeline/results/submission.py), the MLflow run's description (pipeline/tracking/runs.py)
and the fact sheet (pipeline/tracking/factsheet.py), so that the three cannot disagree.

Everything comes from the params (and the architecture facts in pipeline/model/archs.py);
each output only arranges these phrases in its own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import Params
from pipeline.model.archs import ARCHS, ENCODER_KNOB

# export.output_resize -> how the device graph brings the depth map up to the device size
OUTPUT_RESIZE_WORDS = {
    "separable": "separable bilinear resize out, columns then rows",
    "bilinear": "bilinear resize out",
}


@dataclass(frozen=True)
class Method:
    arch: str  # train.arch
    network: str  # the architecture: encoder, width, decoder
    output: str  # what the depth head puts out
    geometry: str  # working resolution, device graph, resizes
    precision: str  # export.precision
    extra_data: tuple[str, ...]  # what trained the model besides the challenge's own training set


def describe(params: Params) -> Method:
    return Method(
        params.train.arch,
        network(params),
        output(params),
        geometry(params),
        params.export.precision,
        tuple(extra_data_used(params)),
    )


def network(params: Params) -> str:
    """mobile_unet: mobilenet_v2 encoder x0.35 (from scratch) + light U-Net decoder with
    concatenated skips, decoder_channels 32"""
    t = params.train
    arch = ARCHS[t.arch]
    channels = f", decoder_channels {t.decoder_channels}" if arch.decoder_channels else ""
    decoder = arch.about + channels
    if not arch.encoder:
        return f"{t.arch}: {decoder} at width x{t.width_multiplier}, from scratch"
    encoder = t.encoder if arch.encoder == ENCODER_KNOB else arch.encoder
    return (
        f"{t.arch}: {encoder} encoder x{t.width_multiplier} ({encoder_start(params)}) + {decoder}"
    )


def encoder_weights(params: Params) -> str:
    """Where the encoder's starting weights came from: a file by its name, or keras's own."""
    w = params.train.encoder_weights
    return "ImageNet (keras.applications)" if w == "imagenet" else Path(w).name


def encoder_start(params: Params) -> str:
    """'from scratch', or the pretrained start: the file, the batch-norm rule, the learning rate"""
    t = params.train
    if t.encoder_weights == "none":
        return "from scratch"
    return (
        f"pretrained: {encoder_weights(params)}, batch norms {t.encoder_batchnorm}, learning "
        f"rate x{t.encoder_lr_scale:g}"
    )


def output(params: Params) -> str:
    t = params.train
    if ARCHS[t.arch].bounded:
        return (
            f"depth in metres, exp of a sigmoid-bounded log depth in "
            f"[{t.min_depth}, {t.max_depth}] m"
        )
    return "depth in metres from a plain ReLU, as the organizers' (no train.min_depth/max_depth)"


def geometry(params: Params) -> str:
    t, e = params.train, params.export
    if (t.height, t.width) == (e.height, e.width):
        return (
            f"working resolution {t.height}x{t.width}, the {e.height}x{e.width} TFLite graph's "
            "own (no resize)"
        )
    return (
        f"working resolution {t.height}x{t.width} resized inside a {e.height}x{e.width} "
        f"TFLite graph (bilinear resize in; {OUTPUT_RESIZE_WORDS[e.output_resize]})"
    )


def extra_data_used(params: Params) -> list[str]:
    """What trained the model besides the challenge's own training set (package.challenge_sources):
    each makes the readme say Extra Data 1 and is named in its description."""
    t, d = params.train, params.data
    used = [
        f"source {name} ({src.path})"
        for name, src in d.sources.items()
        if name not in params.package.challenge_sources
    ]
    used += [f"unlabeled {name} ({src.path})" for name, src in d.unlabeled.items()]
    if params.teacher.model:
        used.append(f"teacher {Path(params.teacher.model).name} ({params.teacher.output})")
    if t.encoder_weights != "none":
        used.append(f"encoder weights {encoder_weights(params)}")
    if t.init_from:
        used.append(f"initial weights {Path(t.init_from).name}")
    return used


def losses(params: Params) -> str:
    """The training losses with their weights, or 'none'."""
    loss = params.train.loss
    weights = {
        name: getattr(loss, f"{name}_weight")
        for name in ("silog", "grad", "l1", "berhu", "rmse", "distill", "distill_grad")
    }
    items = [
        f"{name} x{weight}" + (f" (lambda {loss.silog_lambda})" if name == "silog" else "")
        for name, weight in weights.items()
        if weight > 0
    ]
    return ", ".join(items) or "none"


def augmentation(params: Params) -> str:
    a = params.train.augment
    items = ["horizontal flip"] if a.flip else []
    if a.crop_prob > 0 and a.crop_min_scale < 1:
        items.append(f"crop-and-resize (p {a.crop_prob}, scale >= {a.crop_min_scale})")
    jitter = [
        f"{k} {getattr(a, k)}"
        for k in ("brightness", "contrast", "saturation", "hue")
        if getattr(a, k) > 0
    ]
    if jitter:
        items.append(f"colour jitter ({', '.join(jitter)})")
    return ", ".join(items) or "none"
