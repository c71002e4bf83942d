"""Evaluation errors (one-line messages, shown as they are by the CLI and TUI)."""

from __future__ import annotations

from engine.errors import EngineError


class EvaluationError(EngineError):
    """Nothing to evaluate, an edit that is not part of the history, a model without a pipeline, ..."""
