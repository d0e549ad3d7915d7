"""Library code of the MAI depth pipeline: importable, no side effects at import time.

The subpackages follow the chain `synthesize -> index -> prepare -> teacher -> train ->
export -> benchmark -> evaluate -> package -> track`; each may import only the groups
listed before it here (tests/test_layout.py enforces it):

  core      params, errors, file boundaries, paths, stage entry, host facts, official metrics
  data      the challenge layout, sources and splits, procedural scenes, the tf.data input
  model     networks (one file per architecture), losses, Keras training
  device    TFLite conversion and export, LiteRT inference, timing, the Pi 4 estimate
  teacher   running a published or home-made teacher and aligning its depth
  results   evaluation, depth pictures, the submission ZIP
  tracking  MLflow runs, comparison of runs, fact sheet, sweeps of experiments
"""

# The groups in their allowed import order: a module may import its own group and those before it.
LAYERS = ("core", "data", "model", "device", "teacher", "results", "tracking")
