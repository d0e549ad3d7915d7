"""Runs across time and machines: one MLflow run per pipeline run, comparison of runs, the
challenge fact sheet, and sweeps of DVC experiments.

May import: every other group."""
