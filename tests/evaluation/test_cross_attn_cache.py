"""The cross-attention proxy's embedding cache: a UNet edit reuses the unedited pass's prompt batches
bit for bit, and any change of the text encoder's weights is a miss."""

from __future__ import annotations

import pytest
import torch

import engine.evaluation.cross_attn as ca
from engine.delta import EditDelta, MatrixUpdate


@pytest.fixture(scope="module")
def model(model_dir):
    from engine.models import load_model

    return load_model(model_dir, device="cpu", with_pipeline=True)


@pytest.fixture
def counted(monkeypatch):
    """Count the text-encoder passes behind kv_features."""
    import engine.evaluation.cross_attn as cf

    calls = []
    real = cf.token_embeddings

    def counting(model, texts):
        calls.append(tuple(texts))
        return real(model, texts)

    monkeypatch.setattr(cf, "token_embeddings", counting)
    return calls


def _uncached(model, texts, calls):
    """kv_features computed from scratch (an empty cache), not counted in ``calls``."""
    import weakref

    old, n = ca._MEANS, len(calls)
    ca._MEANS = weakref.WeakKeyDictionary()
    try:
        return ca.kv_features(model, texts)
    finally:
        ca._MEANS = old
        del calls[n:]


def _unet_delta(model) -> EditDelta:
    name = next(iter(ca.projections(model)))
    w = model.pipeline.unet.get_submodule(name).weight
    torch.manual_seed(0)
    return EditDelta(updates=[MatrixUpdate("unet", name, torch.randn(w.shape[0], 1), torch.randn(w.shape[1], 1))])


def test_unet_edit_reuses_the_prompt_batch_and_gives_the_same_bits(model, counted):
    from engine.delta import applied

    texts = ["A banana on a table", "A blue banana", "A dog in a park"]
    base = ca.kv_features(model, texts)
    assert len(counted) == 1
    with applied(model, _unet_delta(model)):
        edited = ca.kv_features(model, texts)
        assert len(counted) == 1  # the text encoder did not run again
        assert torch.equal(edited, _uncached(model, texts, counted))
        assert not torch.equal(edited, base)  # the edited projection's features moved
    assert torch.equal(ca.kv_features(model, texts), base) and len(counted) == 1
    ca.kv_features(model, texts[:2])  # another batch: encoded (a batch is only reused as a whole)
    assert len(counted) == 2


def test_any_text_encoder_change_misses(model, counted):
    texts = ["A cat on a table", "A red cat"]
    base = ca.kv_features(model, texts)
    fc2 = model.adapter.fc2(1)
    saved = fc2.weight.detach().clone()
    with torch.no_grad():
        fc2.weight.add_(0.01)  # in place through the parameter (what a delta does)
    try:
        moved = ca.kv_features(model, texts)
        assert len(counted) == 2 and not torch.equal(moved, base)
        assert torch.equal(moved, _uncached(model, texts, counted))
        fc2.weight.data.add_(0.01)  # through .data: the version counter does not move, the values do
        assert torch.equal(ca.kv_features(model, texts), _uncached(model, texts, counted)) and len(counted) == 3
    finally:
        with torch.no_grad():
            fc2.weight.copy_(saved)
    assert torch.equal(ca.kv_features(model, texts), base)
