"""The open_clip judge: spec parsing, offline-only loading, cached texts, softmax(100*cos)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.errors import EngineError
from engine.evaluation.judge import JudgeNotFoundError, load_judge, parse_judge_spec


def test_default_spec_is_the_papers_judge():
    s = parse_judge_spec(None)
    assert (s.model, s.pretrained_tag, s.checkpoint) == ("ViT-bigG-14", "laion2b_s39b_b160k", None)
    s = parse_judge_spec("ViT-B-32:/models/b32.pt")
    assert s.model == "ViT-B-32" and str(s.checkpoint) == "/models/b32.pt"


def test_missing_default_judge_is_one_clear_line(tmp_path):
    with pytest.raises(JudgeNotFoundError) as e:
        load_judge(None, "cpu", cache_dir=tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, EngineError) and "\n" not in msg
    assert "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" in msg and "--judge" in msg


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(JudgeNotFoundError, match="does not exist"):
        load_judge(f"ViT-B-32:{tmp_path / 'nope.pt'}", "cpu")


def test_tiny_judge_scores(judge):
    calls = []
    real = judge.model.encode_text

    def counting(tokens):
        calls.append(tokens.shape[0])
        return real(tokens)

    judge.model.encode_text = counting
    try:
        images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
        feats = judge.encode_images(images)
        assert feats.shape == (2, 32)
        assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
        p = judge.pair_probs(feats, ["a red square", "a red square"], ["a blue square", "a blue square"])
        judge.pair_probs(feats, ["a red square"] * 2, ["a blue square"] * 2)
        assert sum(calls) == 2  # each distinct text encoded once
        t = judge.encode_texts(["a red square", "a blue square"])
        expect = torch.softmax(100 * feats @ t.T, -1)
        assert torch.allclose(p, expect, atol=1e-5)
    finally:
        judge.model.encode_text = real


def test_refact_judge_env_sets_the_default_for_cli_and_tui(monkeypatch, judge_spec, tmp_path):
    monkeypatch.setenv("REFACT_JUDGE", f"ViT-B-32:{tmp_path / 'missing.pt'}")
    with pytest.raises(JudgeNotFoundError, match="missing.pt"):
        load_judge(None, "cpu")
    monkeypatch.setenv("REFACT_JUDGE", judge_spec)
    from_env, explicit = load_judge(None, "cpu"), load_judge(judge_spec, "cpu")
    assert from_env.name == explicit.name
    a, b = from_env.model.state_dict(), explicit.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
