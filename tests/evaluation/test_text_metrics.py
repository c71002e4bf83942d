"""Text-space metrics on the tiny pipeline's encoder, before and after a real edit."""

from __future__ import annotations

import pytest
import torch

from engine.base_weights import base_fc2_of, fc2_module, fc2_weights
from engine.evaluation.text_metrics import FeatureCache, encode_texts, text_metrics
from engine.request import EditRequest, Probe

REQUEST = EditRequest(
    prompt="canada's prime minister", source="justin trudeau", target="beyonce",
    positives=(Probe("canada's pm giving a speech", "justin trudeau giving a speech", "beyonce giving a speech"),
               Probe("a portrait of canada's prime minister", "a portrait of justin trudeau", "a portrait of beyonce")),
    negatives=(Probe("a senator", "a senator", "beyonce"), Probe("a red car", "a red car", "a pink car")),
)


def test_fc2_swap_restores_bit_exactly(tiny_model):
    w = fc2_module(tiny_model, 2).weight
    original = w.detach().clone()
    with fc2_weights(tiny_model, {2: torch.zeros_like(original)}):
        assert w.abs().max().item() == 0.0
    assert torch.equal(w, original)


def test_feature_cache_encodes_each_text_once(tiny_model):
    seen = []

    def enc(texts):
        seen.extend(texts)
        return encode_texts(tiny_model, texts)

    cache = FeatureCache(enc)
    a = cache.get(["x y", "a cat", "x y"])
    b = cache.get(["a cat", "a dog"])
    assert seen == ["x y", "a cat", "a dog"]
    assert torch.equal(a[1], b[0]) and torch.equal(a[0], a[2])


def _edit(model, request):
    """A deterministic rank-free gradient edit of fc2 at layer 2 that pulls the prompt's pooled
    feature to the frozen target feature (strong and fast on the random tiny encoder)."""
    target = encode_texts(model, [request.target]).detach()
    w = fc2_module(model, 2).weight
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        te, tok = model.text_encoder, model.tokenizer
        out = te(**tok([request.prompt], return_tensors="pt")).pooler_output
        (out - target).pow(2).sum().backward()
        opt.step()
    w.requires_grad_(False)


def test_text_metrics_move_the_right_way_after_an_edit(tiny_model):
    frozen = FeatureCache.frozen(tiny_model, base_fc2_of(tiny_model))
    before = text_metrics(tiny_model, frozen, REQUEST)
    assert before.n_positives == 2 and before.n_negatives == 2
    _edit(tiny_model, REQUEST)
    # frozen features must still be the base encoder's, although the weights changed
    base_target = frozen.get([REQUEST.target])
    after = text_metrics(tiny_model, frozen, REQUEST)
    with fc2_weights(tiny_model, base_fc2_of(tiny_model)):
        assert torch.allclose(encode_texts(tiny_model, [REQUEST.target]), base_target, atol=0)
    assert after.p_target > before.p_target + 0.05
    assert after.p_target > 0.5 and after.efficacy == 1.0
    assert after.specificity is not None and 0.0 <= after.specificity <= 1.0
    assert after.f1 == pytest.approx(0 if after.generality + after.specificity == 0 else
                                     2 * after.generality * after.specificity / (after.generality + after.specificity))
