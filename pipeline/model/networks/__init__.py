"""The networks: `train.arch` name -> builder(TrainConfig) -> keras.Model (one module each,
listed in pipeline/model/archs.py), and what wraps a built model for the device.

Every core model takes N x H x W x 3 float32 RGB in 0..255 at the working resolution
(train.height x train.width) and returns N x H x W x 1 float32 depth in metres. The
device model (`wrap_for_device`) adds the resizes to and from the challenge's 480x640
inside the graph, so the exported TFLite is a drop-in for the benchmark app.
Only standard Keras layers are used, so saved models load without custom objects and
convert to TFLite builtin ops.
"""

from __future__ import annotations

import importlib

from pipeline.core.config import OUTPUT_RESIZE, OUTPUT_RESIZES, TrainConfig
from pipeline.core.errors import DataError
from pipeline.model.archs import ARCHS


def build_model(cfg: TrainConfig):
    """Build the core (working-resolution) model named by cfg.arch, with fresh weights."""
    arch = ARCHS.get(cfg.arch)
    if arch is None:
        raise ValueError(f"unknown train.arch {cfg.arch!r}; known: {', '.join(ARCHS)}")
    if cfg.height % arch.stride or cfg.width % arch.stride:
        raise ValueError(
            f"train.height/width {cfg.height}x{cfg.width} must be divisible by "
            f"{arch.stride} for {cfg.arch}"
        )
    # Imported here: importing pipeline.model.networks must not import TensorFlow.
    model = importlib.import_module(f"{__name__}.{arch.module}").build(cfg)
    set_batchnorm_momentum(model, BN_MOMENTUM)
    return model


# keras.applications use 0.999: the moving statistics then need thousands of steps to
# leave their initial values, and a short run evaluates with nearly random normalisation.
BN_MOMENTUM = 0.9


def set_batchnorm_momentum(model, momentum: float) -> None:
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def fit_batchnorm_statistics(model, images) -> None:
    """Set every BatchNormalization's moving mean and variance to those of `images` (one
    forward pass in training mode), for random-weight models that are converted and timed.

    Fresh moving statistics (0 and 1) leave each layer's output at the scale of its random
    weights: through a deep encoder activations shrink ~1e8-fold, and int8 calibration then
    gives scales no trained model has (XNNPACK refuses an int8 ADD whose input and output
    scales differ by more than 1024x, splitting the graph). Trained models are normalized.
    """
    import keras

    norms = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not norms:
        return
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the new statistics replace the old ones
    try:
        model(images, training=True)
    finally:
        for layer, momentum in zip(norms, saved):
            layer.momentum = momentum


def wrap_for_device(
    core, *, height: int = 480, width: int = 640, output_resize: str = OUTPUT_RESIZE
):
    """1xHxWx3 RGB 0..255 -> resize to the core's working size -> core -> resize back to HxW.

    output_resize (export.output_resize): bilinear, one RESIZE_BILINEAR; separable, the same
    bilinear values columns then rows (`layers.separable_resize`), cheaper in XNNPACK.
    """
    import keras

    from pipeline.model.networks.layers import separable_resize

    if output_resize not in OUTPUT_RESIZES:
        raise ValueError(
            f"unknown output_resize {output_resize!r}; known: {', '.join(OUTPUT_RESIZES)}"
        )
    _, work_h, work_w, _ = core.input_shape
    rgb = keras.Input((height, width, 3), batch_size=1, name="rgb")
    x = rgb
    if (work_h, work_w) != (height, width):
        x = keras.layers.Resizing(work_h, work_w, interpolation="bilinear", name="to_working_size")(
            x
        )
    depth = core(x)
    if (work_h, work_w) != (height, width):
        if output_resize == "separable":
            depth = separable_resize(depth, height, width, name="to_device_size")
        else:
            depth = keras.layers.Resizing(
                height, width, interpolation="bilinear", name="to_device_size"
            )(depth)
    return keras.Model(rgb, depth, name=f"{core.name}_device")


def load_keras_model(path, missing: str = "model file not found (run the train stage first)"):
    """A saved .keras model without its training config (custom losses are not needed);
    a missing or unreadable file is a one-line DataError naming it."""
    import zipfile
    from pathlib import Path

    import keras

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {missing}")
    # Keras says "File not found" for any file it cannot open as a zip: say what is wrong.
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the Keras model file is empty (0 bytes)")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not a Keras model (a .keras file is a zip archive; this is not one)"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # keras raises many types for a bad archive
        raise DataError(
            f"{path}: cannot load Keras model ({str(err).splitlines()[0][:200]})"
        ) from None
