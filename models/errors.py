"""The project's error family.

It lives at the bottom of the dependency graph so that every layer can raise it. Only the CLI turns
a `PipelineError` into a one-line message and exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A user-facing error: bad input, bad config, missing data. Message says what and how to fix."""


class ConfigError(PipelineError):
    """A configuration field has an invalid value or an unknown key."""


class DatasetError(PipelineError):
    """Source data or a stored dataset is missing, malformed or inconsistent."""


class ModelError(PipelineError):
    """A model cannot be built, loaded or resolved."""


class TrainingDivergedError(ModelError):
    """Loss or gradients became NaN/Inf; the run stops and the model is never registered."""

    def __init__(self, message: str, *, epoch: int, step: int):
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class TrackingError(PipelineError):
    """The MLflow tracking server or registry cannot be reached or refused a request."""


class StorageError(PipelineError):
    """A store cannot be written: read-only, full, over quota or not permitted. The message names
    the path and the fix; whatever was being written is left out, never half-visible."""
