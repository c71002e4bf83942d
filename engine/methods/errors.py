"""Errors of the method layer (torch-free, so the queue and the CLI can name them cheaply)."""

from engine.errors import EngineError


class MethodError(EngineError):
    """An unknown method or bad method hyperparameters."""


class MethodRefusedError(EngineError):
    """The method cannot edit this model (e.g. a UNet method on a pipeline without a UNet)."""
