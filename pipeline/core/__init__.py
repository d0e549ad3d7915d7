"""Foundation: params (config), errors and their exit codes, file boundaries (mm only at PNGs),
the stages' paths, the stage entry shape, host facts and the official metrics.

Imports nothing else of the project: every other group builds on it."""
