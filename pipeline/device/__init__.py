"""The device side: Keras -> TFLite conversion and export, LiteRT inference, local and remote
timing, the Raspberry Pi 4 estimate and the random-weights probe.

tflite_runner.py is self-contained on purpose (it is copied alone to a device).
May import: core, data, model."""
