"""One thin module per DVC stage: parse params, call pipeline/, write outputs atomically."""

# The architectures (train.arch) are the model group's, which core's params checks may not
# import: registering them here makes every stage check train.arch the same way.
import pipeline.model.archs  # noqa: F401
