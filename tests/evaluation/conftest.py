"""Tiny models for the evaluation tests: a random SD-v1 pipeline (engine.builder) and a random
open_clip judge registered from a config dict. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_JUDGE_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}


def write_tiny_judge(folder: Path, seed: int = 0) -> str:
    """Write an open_clip config + random checkpoint; returns the --judge spec CONFIG.json:CKPT."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "tiny-judge.json"
    cfg.write_text(json.dumps(TINY_JUDGE_CONFIG))
    open_clip.add_model_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model("tiny-judge")
    ckpt = folder / "tiny-judge.pt"
    torch.save(model.state_dict(), ckpt)
    return f"{cfg}:{ckpt}"


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
