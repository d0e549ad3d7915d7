"""Data in the challenge layout: sources, validation and splits (dataset), procedural scenes
(synthetic) and the tf.data input pipeline of training (tfdata).

May import: core."""
