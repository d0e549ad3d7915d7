"""Benchmarks that print figures; each module is run from the project root as

    .venv/bin/python -m bench.NAME [--help]

bench.common holds what several share: the shared data paths, `--set KEY=VALUE` overrides,
params with overrides, the train -> fp32 TFLite -> per-source evaluation chain and its
results table. Importing a bench module imports no TensorFlow (its main() does).
"""

import os

# Before any module of the package imports TensorFlow: its C++ start-up noise drowns the figures.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pipeline.model.archs  # noqa: E402, F401  (registers train.arch's choices)
