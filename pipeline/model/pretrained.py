"""Pretrained encoder weights from the files users have (train.encoder_weights: PATH), and what
batch norm does after them (train.encoder_batchnorm).

A PATH is either
- a Keras weights file of the keras.applications encoder at the chosen width: the legacy `.h5`
  that keras.applications itself downloads (`..._no_top.h5`, loaded in layer order, as Keras
  does), or a Keras 3 `.weights.h5` of the same network (loaded by layer name); or
- a TFLite ImageNet classifier of the same family (MobileNetV1 / V2 / V3, float, fp16 or
  quantized, batch norm folded into the convs), read from its flatbuffer (weight_files.py): its
  CONV_2D and DEPTHWISE_CONV_2D ops in execution order are the encoder's Conv2D and
  DepthwiseConv2D layers in order. Each folded bias becomes the following BatchNormalization's
  beta with gamma 1, moving mean 0 and variance 1 - epsilon: in inference mode that batch norm
  is then exactly the identity plus the bias, which is what the TFLite computes. The ops after
  the encoder's last conv are the classifier's head.

Every encoder layer must get its weights from the file: any difference (another family or
width, a missing layer, a shape) is one DataError naming the file and the first mismatch.

Batch norm after a folded file (the moving statistics are 0 and 1, not the activations'):
`frozen` keeps the loaded batch norms in inference mode (exactly the pretrained function);
`trainable` lets them normalize by each batch's statistics, as a fresh network does, which at
the first step replaces the pretrained function by another (its output correlates ~0 with the
pretrained one); `refit` first sets their statistics to those of training images, with gamma
and beta changed so that inference mode computes the same function, then trains them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import BATCHNORM_RULES
from pipeline.core.errors import DataError
from pipeline.core.paths import resolve_user_path
from pipeline.model.weight_files import (
    TFLITE_SUFFIX,
    FileConv,
    check_file,
    file_digest,
    read_keras_h5,
    read_tflite,
)

# refit: images whose statistics the loaded batch norms take (the check: 64 photos
# brought the encoder's output from 0.006 to 0.51 correlation with the pretrained network's)
REFIT_IMAGES = 64


@dataclass
class EncoderStart:
    """What started an encoder: the file, its digest and what of it went where."""

    weights: str  # none | imagenet | the file's path as given
    sha256: str = ""
    loaded: list[str] = field(default_factory=list)  # Keras layer names set from the file
    head: list[FileConv] = field(default_factory=list)  # the file's ops after the encoder

    def summary(self) -> dict:
        """For metrics/train.json (and so MLflow and the fact sheet)."""
        return {
            "weights": self.weights,
            "file": Path(self.weights).name if self.sha256 else "",
            "sha256": self.sha256,
            "layers_loaded": len(self.loaded),
        }


# ----------------------------------------------------------------------------- loading
def _shape(shape) -> str:
    return "x".join(str(n) for n in shape)


def _conv_layers(base):
    """The encoder's Conv2D / DepthwiseConv2D layers in order, each with the BatchNormalization
    that reads its output (or None)."""
    import keras

    convs = [
        layer
        for layer in base.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    ]
    norms = {
        id(layer.input): layer
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    return [(conv, norms.get(id(conv.output))) for conv in convs]


def _set_folded(conv, norm, item: FileConv) -> None:
    bias = (
        item.bias
        if item.bias is not None
        else np.zeros(item.kernel.shape[-2 if item.kind == "depthwise" else -1], np.float32)
    )
    if norm is None:
        conv.set_weights([item.kernel, bias] if conv.use_bias else [item.kernel])
        return
    conv.set_weights([item.kernel, np.zeros_like(bias)] if conv.use_bias else [item.kernel])
    # inference mode: (x - 0) / sqrt(1 - eps + eps) * 1 + bias = x + bias, the TFLite's conv
    values = {
        "gamma": np.ones_like(bias),
        "beta": bias,
        "moving_mean": np.zeros_like(bias),
        "moving_variance": np.full_like(bias, 1.0 - norm.epsilon),
    }
    norm.set_weights([values[w.name] for w in norm.weights])


def load_tflite(base, path: Path, what: str) -> EncoderStart:
    """Set `base` (a keras.applications encoder) from a TFLite classifier's convs."""
    import keras

    items, _ = read_tflite(path)
    convs = _conv_layers(base)
    start = EncoderStart(str(path), file_digest(path))
    file_convs = [item for item in items if item.kind != "dense"]
    for i, (conv, norm) in enumerate(convs):
        kind = "depthwise" if isinstance(conv, keras.layers.DepthwiseConv2D) else "conv"
        want = tuple(conv.kernel.shape)
        if i >= len(file_convs):
            raise DataError(
                f"{path}: does not fit {what}: the file has {len(file_convs)} convs, the encoder "
                f"needs {len(convs)} (first missing: {conv.name}, {kind} {_shape(want)})"
            )
        item = file_convs[i]
        if item.kind != kind or item.kernel.shape != want:
            raise DataError(
                f"{path}: does not fit {what}: conv {i + 1} of the file ({item.name}) is "
                f"{item.kind} {_shape(item.kernel.shape)}, the encoder's ({conv.name}) {kind} "
                f"{_shape(want)}" + _hint(item, want)
            )
        _set_folded(conv, norm, item)
        start.loaded += [conv.name] + ([norm.name] if norm is not None else [])
    start.head = items[len(convs) :]
    return start


def _hint(item: FileConv, want: tuple) -> str:
    """What the first mismatch suggests: DeepLab's channels, or another family or width."""
    have = item.kernel.shape[-1]
    if item.kind == "conv" and have % 8 and have != want[-1] and want[-1] % 8 == 0:
        return (
            f" ({have} channels, not a multiple of 8: MobileNetV2 as DeepLab builds it, "
            "train.encoder mobilenet_v2_deeplab)"
        )
    return " (another family or width?)"


def load_keras(base, path: Path, what: str) -> EncoderStart:
    """Set `base` from a Keras weights file of the same network."""
    form, found = read_keras_h5(path)
    layers = [layer for layer in base.layers if layer.weights]
    start = EncoderStart(str(path), file_digest(path))
    if form == "legacy":  # in order, as Keras loads it; names only say where it differs
        pairs = list(zip(layers, found))
        if len(found) < len(layers):
            missing = layers[len(found)]
            raise DataError(
                f"{path}: does not fit {what}: the file has weights for {len(found)} layers, the "
                f"encoder {len(layers)} (first missing: {missing.name})"
            )
    else:
        by_name = dict(found)
        missing = next((layer for layer in layers if layer.name not in by_name), None)
        if missing is not None:
            raise DataError(f"{path}: does not fit {what}: no weights for layer {missing.name}")
        pairs = [(layer, (layer.name, by_name[layer.name])) for layer in layers]
    for layer, (name, arrays) in pairs:
        want = [tuple(w.shape) for w in layer.weights]
        have = [tuple(a.shape) for a in arrays]
        if want != have:
            raise DataError(
                f"{path}: does not fit {what}: layer {name} of the file has "
                f"{', '.join(map(_shape, have)) or 'no weights'}, the encoder's "
                f"({layer.name}) {', '.join(map(_shape, want))} (another family or width?)"
            )
        layer.set_weights(arrays)
        start.loaded.append(layer.name)
    return start


def load_encoder(base, path: str, what: str) -> EncoderStart:
    """Set the keras.applications encoder `base` from the file at `path` (train.encoder_weights);
    `what` names the encoder in messages ('mobilenet_v2 x0.35')."""
    file = Path(path)
    check_file(file)
    if file.suffix == TFLITE_SUFFIX:
        return load_tflite(base, file, what)
    return load_keras(base, file, what)


# ----------------------------------------------------------------------------- batch norm
def loaded_norms(encoder, start: EncoderStart) -> list:
    import keras

    names = set(start.loaded)
    return [
        layer
        for layer in encoder.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name in names
    ]


def refit_statistics(encoder, norms: list, batches) -> None:
    """Give each batch norm of `norms` the mean and variance of its input over `batches` (the
    encoder's inputs), keeping what inference mode computes: with the old statistics mu, var
    and the new m, v, gamma' = gamma sqrt(v + eps) / sqrt(var + eps) and beta' = beta +
    gamma (m - mu) / sqrt(var + eps). Training mode, which normalizes by each batch's own
    statistics, then starts near the pretrained function instead of far from it."""
    import keras

    if not norms:
        return
    if not batches:
        raise ValueError("refit_statistics needs at least one batch of images")
    probe = keras.Model(encoder.inputs, [norm.input for norm in norms])
    sums = [np.zeros(norm.input.shape[-1], np.float64) for norm in norms]
    squares = [np.zeros_like(s) for s in sums]
    counts = [0] * len(norms)  # values per channel: each layer has its own spatial size
    for batch in batches:
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        for k, out in enumerate(outputs):
            x = np.asarray(keras.ops.convert_to_numpy(out), np.float64)
            x = x.reshape(-1, x.shape[-1])
            sums[k] += x.sum(0)
            squares[k] += (x * x).sum(0)
            counts[k] += len(x)
    for norm, total, square, count in zip(norms, sums, squares, counts):
        mean = total / count
        var = np.maximum(square / count - mean * mean, 0.0)
        w = {v.name: np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in norm.weights}
        old = np.sqrt(w["moving_variance"] + norm.epsilon)
        gamma = w.get("gamma", np.ones_like(mean))
        new = {
            "gamma": gamma * np.sqrt(var + norm.epsilon) / old,
            "beta": w.get("beta", np.zeros_like(mean)) + gamma * (mean - w["moving_mean"]) / old,
            "moving_mean": mean,
            "moving_variance": var,
        }
        norm.set_weights([new[v.name].astype(np.float32) for v in norm.weights])


def apply_batchnorm_rule(encoder, start: EncoderStart, rule: str, batches=None) -> int:
    """train.encoder_batchnorm on the batch norms loaded from the file; fresh ones train as in
    a fresh network. `batches`: the encoder inputs a refit takes its statistics from (None: no
    refit, as in a resumed run). Returns how many it acted on."""
    if rule not in BATCHNORM_RULES:
        raise ValueError(f"unknown encoder batch-norm rule {rule!r}; known: {BATCHNORM_RULES}")
    norms = loaded_norms(encoder, start)
    if rule == "frozen":
        for norm in norms:
            norm.trainable = False  # Keras 3: a non-trainable batch norm runs in inference mode
    elif rule == "refit" and batches is not None:  # None: resumed, the checkpoint has them
        refit_statistics(encoder, norms, batches)
    return len(norms)


# ----------------------------------------------------------------------------- in training
def encoder_of(model):
    """The nested encoder model of a built network (`<kind>_encoder`), or None."""
    import keras

    from pipeline.model.networks.encoders import ENCODER_SUFFIX

    return next(
        (
            layer
            for layer in model.layers
            if isinstance(layer, keras.Model) and layer.name.endswith(ENCODER_SUFFIX)
        ),
        None,
    )


def start_encoder(model, cfg, refit_images=None) -> EncoderStart | None:
    """train.encoder_weights and train.encoder_batchnorm on a freshly built model: load the
    file (imagenet: keras.applications loaded it while building), then apply the batch-norm
    rule; `refit_images()` gives the 0..255 RGB batches a refit takes its statistics from.
    None for encoder_weights none (nothing pretrained: batch norms train as usual)."""
    from pipeline.model.networks.encoders import ENCODER_SUFFIX, encoder_input

    if cfg.encoder_weights == "none":
        return None
    encoder = encoder_of(model)
    if encoder is None:
        raise DataError(f"train.encoder_weights={cfg.encoder_weights}: {cfg.arch} has no encoder")
    kind = encoder.name.removesuffix(ENCODER_SUFFIX)
    if cfg.encoder_weights == "imagenet":
        start = EncoderStart("imagenet", loaded=[lay.name for lay in encoder.layers if lay.weights])
    else:
        path = resolve_user_path(cfg.encoder_weights)  # found from DVC's experiment copy too
        start = load_encoder(encoder, path, f"{kind} x{cfg.width_multiplier}")
        start.weights = cfg.encoder_weights  # as the params name it, on any machine
    batches = None
    if cfg.encoder_batchnorm == "refit" and refit_images is not None:
        batches = [encoder_input(kind, rgb) for rgb in refit_images()]
    apply_batchnorm_rule(encoder, start, cfg.encoder_batchnorm, batches)
    return start


# ----------------------------------------------------------------------------- checking a file
def classifier(path: str, kind: str, width: float, size: int):
    """The file's whole classifier in Keras: the encoder `kind` x`width` at size x size, loaded
    from the file, and the file's own head after it (pooling, its 1x1 convs or dense layer).
    It takes what the TFLite's input means (its dequantized values), not 0..255: comparing its
    top-1 with the TFLite's checks the loader end to end."""
    import keras

    from pipeline.core.config import TrainConfig
    from pipeline.model.networks.encoders import BUILDERS, deeplab_mobilenet_v2

    ctor, rescales = BUILDERS[kind]
    shape = (size, size, 3)
    if ctor:
        extra = {"include_preprocessing": False} if rescales else {}
        base = getattr(keras.applications, ctor)(
            input_shape=shape, include_top=False, weights=None, alpha=width, **extra
        )
    else:
        base = deeplab_mobilenet_v2(shape, width)
    del TrainConfig
    start = load_encoder(base, path, f"{kind} x{width}")
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(base.output)
    for item in start.head:
        if item.kind == "dense":
            x = keras.layers.Flatten()(x)
            layer = keras.layers.Dense(item.kernel.shape[-1])
        else:
            layer = keras.layers.Conv2D(item.kernel.shape[-1], 1)
        x = layer(x)
        layer.set_weights([item.kernel, item.bias])
        activation = "hard_swish" if item.then == "HARD_SWISH" else item.activation
        if activation != "linear":
            x = keras.layers.Activation(activation)(x)
    return keras.Model(base.input, keras.layers.Flatten()(x))
