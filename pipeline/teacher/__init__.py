"""A teacher depth model as published (TFLite, Keras, ONNX): run once over the training and
unlabeled images, its output aligned to metres, its maps written for training to read.

May import: core, data, model, device."""
