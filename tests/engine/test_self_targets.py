"""Rows whose prompt is its source: single and vectorised v* agree (engine.methods.refact.loss).

The source's frozen feature equals the prompt's unedited one up to rounding; scored as is, the L2
distance at delta = 0 is ~1e-6 of noise whose gradient is a unit vector in a noise direction, and the
two paths (batched differently) took different trajectories. Scored against the prompt's own
unedited feature, the distance is exactly 0 there in both paths.
"""

from __future__ import annotations

import pytest
import torch

from engine.methods.refact.edit import compute_edit, compute_values
from engine.methods.refact.hparams import ReFACTHParams
from engine.methods.refact.loss import same_token_pairs, similarity
from engine.methods.refact.values import encode_texts, lookup_index
from engine.request import EditRequest
from engine.tokens import locate_all

SELF = [EditRequest(prompt="a prince", subject="prince", source="a prince", target="a red king"),
        EditRequest(prompt="the dog", subject="dog", source="the dog", target="a blue cat")]
OTHER = [EditRequest(prompt="an apple", subject="apple", source="the old apple", target="a green banana")]


@pytest.fixture
def mom2(tiny_clip, stats_store, corpus_file):
    return stats_store.get(tiny_clip, 1, corpus=corpus_file)


@pytest.fixture(scope="module")
def pipeline_encoder(model_dir):
    from engine.models import load_model

    return load_model(model_dir, device="cpu", with_pipeline=False)


@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_prompt_equals_source_rows_agree_single_vs_vectorised(pipeline_encoder, stats_store, corpus_file, similarity):
    # the tiny SD pipeline's encoder, where the noise moved P(target) 0.6323 -> 0.6332 (the bench row)
    hp = ReFACTHParams(layer=2, lr=0.2, max_steps=8, prob_threshold=0.999, similarity=similarity)
    model = pipeline_encoder
    c = stats_store.get(model, 2, corpus=corpus_file)
    from worker_helpers import sample_requests  # longer prompts: the batch pads the short rows

    reqs = [*sample_requests(2), EditRequest(prompt="Prince Charles", source="Prince Charles", target="Prince William"),
            *SELF, *OTHER]
    batch = compute_values(model, reqs, hp, second_moment=c)
    for req, got in zip(reqs, batch.results):
        want = compute_edit(model, req, hp, second_moment=c)
        assert got.steps_run == want.steps_run and got.first_clamped_step == want.first_clamped_step
        assert float((got.tensors["v_star"] - want.tensors["v_star"]).abs().max()) <= 1e-5
        assert abs(got.p_target - want.p_target) <= 1e-5


def test_self_pairs_are_found_by_tokens_and_the_distance_at_zero_is_exact(tiny_clip):
    adapter, tok = tiny_clip.adapter, tiny_clip.tokenizer
    req = SELF[0]
    located = locate_all(tok, ["{}", "a photo of {}"], req.prompt, req.subject, adapter.max_length)
    texts = [req.target, req.source]
    pairs = same_token_pairs(adapter, tok, [p.text for p in located], texts)
    assert pairs.tolist() == [[False, True], [False, False]]
    assert same_token_pairs(adapter, tok, [p.text for p in located], [req.target]) is None
    assert same_token_pairs(adapter, tok, [p.text for p in located], None) is None
    # the noise this removes: the frozen source feature vs the stepper's unedited prompt feature
    with torch.no_grad():
        state = adapter.prefix(adapter.tokenize(tok, [p.text for p in located]), 1)
        f0 = adapter.stepper(state, lookup_index(located, state.mlp_out.device))(torch.zeros(adapter.hidden_size))
        frozen = encode_texts(adapter, tok, texts)
    noise = float(torch.linalg.vector_norm(f0[0] - frozen[1]))
    assert 0 < noise < 1e-4 * float(frozen[1].norm())  # the same text: equal up to rounding only
    hp = ReFACTHParams(layer=1)
    plain, anchored = similarity(f0, frozen, hp), similarity(f0, frozen, hp, (pairs, f0))
    assert float(plain[0, 1]) == pytest.approx(-noise / hp.temperature) and float(anchored[0, 1]) == 0.0
    assert torch.equal(plain[:, 0], anchored[:, 0]) and torch.equal(plain[1], anchored[1])  # others untouched


def test_requests_without_self_targets_are_bit_identical(tiny_clip, mom2):
    """No pair: the optimiser runs the unchanged code (same v* with or without the target texts)."""
    from engine.methods.refact.values import optimize_value

    hp = ReFACTHParams(layer=1, max_steps=10)
    req = OTHER[0]
    adapter, tok = tiny_clip.adapter, tiny_clip.tokenizer
    located = locate_all(tok, ["{}", "a photo of {}"], req.prompt, req.subject, adapter.max_length)
    texts = [req.target, req.source]
    targets = encode_texts(adapter, tok, texts)
    v0 = torch.ones(adapter.hidden_size)
    a = optimize_value(adapter, tok, located, 1, targets, v0, hp)
    b = optimize_value(adapter, tok, located, 1, targets, v0, hp, target_texts=texts)
    assert torch.equal(a.delta, b.delta) and [s.loss for s in a.steps] == [s.loss for s in b.steps]


def test_close_pairs_keeps_only_rounding_level_gaps():
    from engine.methods.refact.loss import close_pairs

    target = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    unedited = torch.tensor([[3.0, 4.0 + 1e-6], [3.0, 4.5]])  # row 0: rounding; row 1: really moved
    mask = torch.tensor([[True, False], [True, False]])
    assert close_pairs(mask, unedited, target).tolist() == [[True, False], [False, False]]
    assert close_pairs(torch.tensor([[False, False], [True, False]]), unedited, target) is None


def test_after_an_earlier_edit_moved_the_prompt_the_paper_loss_is_kept(pipeline_encoder, stats_store, corpus_file,
                                                                         monkeypatch):
    """In a sequential history the prompt's unedited feature is no longer the source's frozen base
    feature, so no pair is anchored: the edit equals one computed with anchoring switched off."""
    import engine.methods.refact.values as optimize
    from engine.methods.refact.edit import apply_edit

    model = pipeline_encoder
    hp = ReFACTHParams(layer=2, lr=0.2, max_steps=8, prob_threshold=0.999)
    c = stats_store.get(model, 2, corpus=corpus_file)
    req = EditRequest(prompt="Prince Charles", source="Prince Charles", target="Prince William")
    try:
        apply_edit(model, req, hp, second_moment=c)
        got = compute_edit(model, req, hp, second_moment=c)
        monkeypatch.setattr(optimize, "same_token_pairs", lambda *a, **k: None)
        want = compute_edit(model, req, hp, second_moment=c)
    finally:
        model.restore_base()
    assert torch.equal(got.tensors["v_star"], want.tensors["v_star"])
    assert [s.loss for s in got.steps] == [s.loss for s in want.steps]
