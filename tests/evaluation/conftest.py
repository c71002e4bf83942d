"""Tiny models for the evaluation tests: a random SD-v1 pipeline (engine.builder) and a random
open_clip judge registered from a config dict. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_tiny_judge(folder: Path, seed: int = 0) -> str:
    """A tiny random open_clip judge on disk; returns the --judge spec CONFIG.json:CHECKPOINT."""
    from engine.evaluation.judge import build_random_judge

    return build_random_judge(folder, seed)


@pytest.fixture(scope="session")
def tiny_pipeline_path(tmp_path_factory) -> Path:
    from engine.builder import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("evalpipe") / "pipe", size="tiny", seed=0)


@pytest.fixture(scope="session")
def judge_spec(tmp_path_factory) -> str:
    return write_tiny_judge(tmp_path_factory.mktemp("judge"))


@pytest.fixture(scope="session")
def judge(judge_spec):
    from engine.evaluation.judge import load_judge

    return load_judge(judge_spec, "cpu")


@pytest.fixture
def tiny_model(tiny_pipeline_path):
    """A freshly loaded tiny pipeline model (tests may edit its weights)."""
    from engine.models import load_model

    return load_model(tiny_pipeline_path, device="cpu", with_pipeline=True)
