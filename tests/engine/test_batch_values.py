"""Vectorised v* over many requests equals one-at-a-time compute_edit (issue 9)."""

from __future__ import annotations

import pytest
import torch

from engine.methods.refact.edit import compute_edit, compute_values
from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest

SUBJECTS = ["prince", "king", "queen", "dog", "cat", "apple", "banana", "bowl of fruit"]
TARGETS = ["red", "blue", "green", "park", "painting", "portrait", "photo", "drawing"]


def requests(n: int = 8) -> list[EditRequest]:
    return [
        # source != prompt: at ||E(p) - E(source)|| = 0 the L2 gradient's direction is rounding noise
        EditRequest(
            prompt=f"a {SUBJECTS[i % 8]}",
            subject=SUBJECTS[i % 8],
            source=f"the old {SUBJECTS[i % 8]}",
            target=f"a {TARGETS[i % 8]} {SUBJECTS[(i + 3) % 8]}",
        )
        for i in range(n)
    ]


def compare(model, reqs, hp, mom2, **kw):
    batch = compute_values(model, reqs, hp, second_moment=mom2, **kw)
    worst = 0.0
    for req, got in zip(reqs, batch.results):
        want = compute_edit(model, req, hp, second_moment=mom2)
        assert got.steps_run == want.steps_run
        assert got.optimizer_updates == want.optimizer_updates
        assert got.early_stopped == want.early_stopped
        assert got.first_clamped_step == want.first_clamped_step
        worst = max(worst, float((got.tensors["v_star"] - want.tensors["v_star"]).abs().max()))
        assert torch.allclose(got.tensors["u"], want.tensors["u"], atol=1e-5)
        assert [e.step for e in got.steps] == [e.step for e in want.steps]
        assert abs(got.p_target - want.p_target) < 1e-5
    return worst, batch


@pytest.fixture
def mom2_tiny(tiny_clip, stats_store, corpus_file):
    return stats_store.get(tiny_clip, 1, corpus=corpus_file)


def test_vectorised_equals_single_tiny(tiny_clip, mom2_tiny):
    hp = ReFACTHParams(layer=1, max_steps=40, prob_threshold=0.6)
    worst, batch = compare(tiny_clip, requests(8), hp, mom2_tiny)
    assert worst <= 1e-5
    steps = {r.steps_run for r in batch.results}
    assert len(steps) > 1, "requests should stop at different steps so compaction is exercised"
    assert batch.stats.rebuilds > 1


def test_chunked_batch_equals_single_and_cosine(tiny_clip, mom2_tiny):
    hp = ReFACTHParams(layer=1, max_steps=12, similarity="cosine")
    worst, batch = compare(tiny_clip, requests(5), hp, mom2_tiny, batch=2)
    assert worst <= 1e-5
    assert batch.stats.chunks == 3


def test_generic_stepper_per_row_contract(tiny_bert, stats_store, corpus_file):
    mom2 = stats_store.get(tiny_bert, 1, corpus=corpus_file)
    hp = ReFACTHParams(layer=1, max_steps=10, temperature=0.05)
    reqs = [
        EditRequest(prompt="a dog", subject="dog", source="a dog", target="a cat"),
        EditRequest(prompt="the king", subject="king", source="the king", target="the queen"),
        EditRequest(prompt="an apple", subject="apple", source="an apple", target="a banana"),
    ]
    worst, _ = compare(tiny_bert, reqs, hp, mom2)
    assert worst <= 1e-5


PARITY = __import__("pathlib").Path(__file__).resolve().parents[2].parent / "shared" / "data" / "parity"


@pytest.mark.skipif(not (PARITY / "expected.json").is_file(), reason="../shared parity fixture absent")
def test_vectorised_equals_single_parity_model():
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    from engine.adapters import adapter_for
    from tests.engine.conftest import EditableModel

    torch.set_num_threads(1)
    enc = CLIPTextModelWithProjection.from_pretrained(str(PARITY / "model"))
    model = EditableModel(enc, AutoTokenizer.from_pretrained(str(PARITY / "model")), adapter_for(enc))
    mom2 = load_file(str(PARITY / "C_layer2.safetensors"))["mom2"]
    hp = ReFACTHParams(layer=2, max_steps=25, prob_threshold=0.9)
    worst, batch = compare(model, requests(8), hp, mom2)
    assert worst <= 1e-5


@pytest.mark.parametrize("fixture", ["tiny_clip", "tiny_clip_proj", "tiny_bert"])
def test_stepper_per_row_delta_contract(fixture, request):
    """features(delta (B, H)) row b == features(delta[b]) computed alone, on every adapter's stepper."""
    from engine.methods.refact.values import lookup_index
    from engine.tokens import locate_all

    model = request.getfixturevalue(fixture)
    adapter, tok = model.adapter, model.tokenizer
    located = locate_all(tok, ["{}", "a photo of {}", "{} in the park"], "the king", "king", adapter.max_length)
    with torch.no_grad():
        state = adapter.prefix(adapter.tokenize(tok, [p.text for p in located]), 1)
        features = adapter.stepper(state, lookup_index(located, state.mlp_out.device))
        torch.manual_seed(0)
        rows = torch.randn(len(located), adapter.hidden_size)
        together = features(rows)
        for b in range(len(located)):
            alone = features(rows[b])[b]
            assert float((together[b] - alone).abs().max()) < 1e-5
