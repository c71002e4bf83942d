"""Engine errors. Every message is one line that names the problem and what to do."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for errors the CLI and TUI show to the user as one line."""


class ModelNotFoundError(EngineError):
    """A model path or hub id is not available locally."""


class ModelFormatError(EngineError):
    """A folder exists but does not hold a supported model."""


class TokenizationError(EngineError):
    """Text too long for the encoder, or a subject that cannot be located in the prompt."""


class InsertionRefusedError(EngineError):
    """The rank-one update would be ill-conditioned or non-finite; the model is left untouched."""


class BatchRefusedError(InsertionRefusedError):
    """A batch's combined update would not deliver its requests (conflicting keys, an update that
    changes nothing); each request may still succeed alone or in another batch, so its jobs stay
    retryable. The model is left untouched."""


class EditCancelled(EngineError):
    """The edit was stopped between optimization steps; the model is left untouched."""


class DeltaIntegrityError(EngineError):
    """A stored delta does not match its checksum, model or shape."""
