"""The pipeline's errors, each with the exit status its stage ends with.

A leaf module (it imports nothing from the project), so every module can raise these
without import loops, and `pipeline.core.cli.run_stage` turns any of them into one
`error: ...` line on stderr and the exit status below (README, "When things go wrong"):
bad input (params, data files, a model file that is not there) exits 2; a step that
failed on good input (conversion, timing, the device, the tracking store) exits 1.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class PipelineError(Exception):
    """Base of the project's errors; the message is one line saying what and where."""

    exit_code = EXIT_FAILED


class ConfigError(PipelineError, ValueError):
    """Bad params; the message names the offending key."""

    exit_code = EXIT_BAD_INPUT


class DataError(PipelineError, ValueError):
    """Bad user data or a missing input file; the message names the file and the problem."""

    exit_code = EXIT_BAD_INPUT


class ReportError(PipelineError):
    """Nothing to compare: no store, no experiment or no runs yet."""

    exit_code = EXIT_BAD_INPUT


class ExportError(PipelineError, RuntimeError):
    """Conversion failed or produced a model the device cannot run."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log  # the converter's full output, for whoever wants the details


class TimingError(PipelineError, RuntimeError):
    """The local timing runner failed."""


class RemoteError(PipelineError, RuntimeError):
    """Timing on a device over SSH failed; the message names the host."""


class TrainingError(PipelineError, RuntimeError):
    """Training on good input failed: a worker of a multi-worker cluster died or hung."""


class TrackingError(PipelineError, RuntimeError):
    """The MLflow store or server refused or is unreachable; the message says what to do."""
