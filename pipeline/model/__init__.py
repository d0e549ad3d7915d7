"""The model and its training: networks (one file per architecture, listed in archs.py), depth
losses, and Keras training with validation, checkpoints and resume.

May import: core, data."""
