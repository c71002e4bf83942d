"""Evaluation of ReFACT edits: text-space metrics (seconds), image-space metrics with a CLIP judge,
before/after grids, quality checks, and accelerate scale-out. No UI imports."""

from engine.evaluation.config import GenerationConfig, ImageEvalConfig, TextEvalConfig
from engine.evaluation.scoring import EditScores, MetricValue, summarize

__all__ = ["EditScores", "GenerationConfig", "ImageEvalConfig", "MetricValue", "TextEvalConfig", "summarize"]
