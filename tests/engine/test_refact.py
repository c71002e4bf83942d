"""End-to-end ReFACT edits on tiny random encoders."""

from __future__ import annotations

import pytest
import torch

from engine.errors import EditCancelled, InsertionRefusedError, TokenizationError
from engine.hashing import module_hash
from engine.methods.refact.edit import apply_edit, compute_edit
from engine.methods.refact.hparams import HParamsError, ReFACTHParams
from engine.methods.refact.insert import insert, right_vector
from engine.request import EditRequest, RequestError

REQUEST = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
MOVING = ReFACTHParams(layer=0, lr=0.5, weight_decay=0.0, max_steps=40)


@pytest.fixture
def edit(stats_store, corpus_file):
    def run(model, hparams=MOVING, request=REQUEST, apply=False, **kw):
        fn = apply_edit if apply else compute_edit
        return fn(model, request, hparams, moments=stats_store, corpus=corpus_file, **kw)

    return run


def margin(feature, target, source):
    """How much closer ``feature`` is to the target than to the source (what the loss rewards)."""
    return float((feature - source).norm() - (feature - target).norm())


def test_apply_edit_inserts_v_star_at_k_e(tiny_clip, edit):
    linear = tiny_clip.adapter.fc2(0)
    w0 = linear.weight.detach().clone()
    res = edit(tiny_clip, apply=True)
    t = res.tensors
    with torch.no_grad():
        got = linear(t["k_e"])
    assert float((got - t["v_star"]).norm() / t["v_star"].norm()) < 1e-4
    assert res.verify_error is not None and res.verify_error < 1e-4
    torch.testing.assert_close(linear.weight - w0, torch.outer(t["r"], t["u"]), rtol=0, atol=1e-6)
    assert abs(res.division_factor - float(t["k_e"] @ t["u"])) < 1e-6
    torch.testing.assert_close(t["v_star"], t["v0"] + t["delta"], rtol=0, atol=0)
    assert res.delta.module == "encoder.layers.0.mlp.fc2" and res.delta.layer == 0
    assert res.lookup_indices == [4, 4, 4, 7, 8, 4, 8, 7, 4, 4]


def test_loss_falls_and_edit_moves_prompt_not_unrelated(tiny_clip, edit):
    tok, adapter = tiny_clip.tokenizer, tiny_clip.adapter
    texts = ["the prince of wales", "a portrait of the prince of wales", "a bowl of fruit", "a photo of a cat"]
    target, source = adapter.encode(tok, [REQUEST.target, REQUEST.source])
    before = adapter.encode(tok, texts)
    res = edit(tiny_clip, apply=True)
    after = adapter.encode(tok, texts)

    assert res.steps[-1].loss < res.steps[0].loss - 0.2
    assert res.p_target > res.steps[0].p_target + 0.1
    assert res.steps[0].delta_norm == 0.0 and res.steps[0].wd == 0.0
    # the edited prompt (bare and in an unseen template) moves toward the target ...
    assert margin(after[0], target, source) > margin(before[0], target, source) + 0.3
    assert margin(after[1], target, source) > margin(before[1], target, source) + 0.2
    # ... while unrelated prompts move far less than the edited one
    moved = (after - before).norm(dim=-1)
    assert float(moved[2:].mean()) < 0.5 * float(moved[0])


def test_step_accounting_and_clamp(tiny_clip, edit):
    hp = MOVING.with_overrides(max_steps=12, clamp_factor=0.5)
    events = []
    res = edit(tiny_clip, hp, on_step=events.append)
    assert (res.steps_run, res.optimizer_updates, res.early_stopped) == (12, 11, False)
    assert [e.step for e in events] == list(range(12)) and events == res.steps
    radius = 0.5 * res.v0_norm
    assert res.first_clamped_step is not None
    clamped = [e.delta_norm for e in res.steps[res.first_clamped_step :]]
    assert max(clamped) == pytest.approx(radius, rel=1e-5)
    assert res.steps[res.first_clamped_step - 1].delta_norm < radius
    assert res.delta_norm == pytest.approx(res.steps[-1].delta_norm, rel=1e-6)


def test_early_stop_honours_threshold(tiny_clip, edit):
    full = edit(tiny_clip, MOVING.with_overrides(max_steps=25, prob_threshold=1.0))
    p = [e.p_target for e in full.steps]
    threshold = (p[0] + max(p)) / 2
    first = next(i for i, x in enumerate(p) if x > threshold)
    res = edit(tiny_clip, MOVING.with_overrides(max_steps=25, prob_threshold=threshold))
    assert res.early_stopped and res.steps_run == first + 1 and res.optimizer_updates == first
    assert res.p_target > threshold and all(e.p_target <= threshold for e in res.steps[:-1])
    assert [e.p_target for e in res.steps] == p[: first + 1]


def test_same_request_twice_is_bit_identical(tiny_clip, edit):
    a = edit(tiny_clip, MOVING.with_overrides(max_steps=15))
    b = edit(tiny_clip, MOVING.with_overrides(max_steps=15))
    assert torch.equal(a.delta.u, b.delta.u) and torch.equal(a.delta.r, b.delta.r)
    assert [e.loss for e in a.steps] == [e.loss for e in b.steps]


def test_compute_edit_leaves_weights_untouched_and_no_grads(tiny_clip, edit):
    before = module_hash(tiny_clip.text_encoder)
    edit(tiny_clip, MOVING.with_overrides(max_steps=5))
    assert module_hash(tiny_clip.text_encoder) == before
    assert all(p.grad is None for p in tiny_clip.text_encoder.parameters())


def test_cancel_between_steps(tiny_clip, edit):
    before = module_hash(tiny_clip.text_encoder)
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(EditCancelled, match="step 3"):
        edit(tiny_clip, apply=True, should_stop=stop)
    assert module_hash(tiny_clip.text_encoder) == before


@pytest.mark.parametrize(
    "request_, error, fragment",
    [
        (EditRequest(prompt="the prince of wales", source="x", target=""), RequestError, "target is empty"),
        (EditRequest(prompt="a cat", source="x", target="y", subject="dog"), RequestError, "does not occur"),
        (EditRequest(prompt="the princess of wales", source="x", target="y", subject="prince"), TokenizationError, "whole tokens"),
        (EditRequest(prompt="word " * 75, source="x", target="y"), TokenizationError, "more than the encoder's 77"),
        (EditRequest(prompt="a cat", source="x", target="dog " * 80), TokenizationError, "shorten it"),
    ],
)
def test_bad_requests_raise_clear_errors(tiny_clip, edit, request_, error, fragment):
    with pytest.raises(error, match=fragment):
        edit(tiny_clip, request=request_)


def test_layer_out_of_range(tiny_clip, edit):
    with pytest.raises(HParamsError, match=r"layers 0\.\.1 of 3"):
        edit(tiny_clip, MOVING.with_overrides(layer=3))
    # the last layer runs after EOS attended the subject: an edit there cannot reach the EOS feature
    with pytest.raises(HParamsError, match="cannot reach its final readout"):
        edit(tiny_clip, MOVING.with_overrides(layer=2))


def test_tiny_division_is_refused_before_any_change(tiny_clip, edit):
    before = module_hash(tiny_clip.text_encoder)
    with pytest.raises(InsertionRefusedError, match="below min_division"):
        edit(tiny_clip, MOVING.with_overrides(max_steps=3, min_division=1e6), apply=True)
    assert module_hash(tiny_clip.text_encoder) == before


def test_non_finite_values_are_refused():
    ok = torch.ones(4)
    with pytest.raises(InsertionRefusedError, match="NaN or infinite"):
        right_vector(torch.tensor([1.0, float("nan"), 0, 0]), ok, ok, ok, 1e-8)
    with pytest.raises(InsertionRefusedError, match="not positive definite"):
        from engine.methods.refact.keys import left_vector

        left_vector(-torch.eye(4), ok)


def test_failed_verification_restores_weights(tiny_clip, edit):
    res = edit(tiny_clip, MOVING.with_overrides(max_steps=3))
    w0 = tiny_clip.adapter.fc2(0).weight.detach().clone()
    wrong_v_star = res.tensors["v_star"] + 1.0
    with pytest.raises(InsertionRefusedError, match="restored"):
        insert(tiny_clip.adapter, res.delta, res.tensors["k_e"], wrong_v_star)
    assert torch.equal(tiny_clip.adapter.fc2(0).weight, w0)


def test_bert_edit_with_temperature(tiny_bert, stats_store, corpus_file):
    # BERT's dense output is small next to the post-LN residual, so the clamp radius is widened.
    hp = ReFACTHParams(layer=1, lr=0.5, weight_decay=0.0, max_steps=30, temperature=0.05, clamp_factor=50)
    req = EditRequest(prompt="the prince of wales", source="a red dog", target="prince charles")
    w = tiny_bert.adapter.fc2(1)
    res = apply_edit(tiny_bert, req, hp, moments=stats_store, corpus=corpus_file)
    assert res.steps[-1].nll < res.steps[0].nll - 0.3
    assert res.p_target > res.steps[0].p_target + 0.05
    with torch.no_grad():
        got = w(res.tensors["k_e"])
    assert float((got - res.tensors["v_star"]).norm() / res.tensors["v_star"].norm()) < 1e-4
    assert res.delta.module == "encoder.layer.1.output.dense"


def test_cosine_similarity_edit(tiny_clip_proj, edit):
    res = edit(tiny_clip_proj, MOVING.with_overrides(similarity="cosine", lr=0.2, max_steps=20, layer=1))
    assert res.steps[-1].loss < res.steps[0].loss
    assert res.p_target > res.steps[0].p_target


def test_sequential_edits_aim_at_the_base_encoders_targets(tiny_clip, edit):
    """After an earlier edit, targets are still the frozen *base* features (paper's sequential setting)."""
    from engine.methods.refact.values import encode_texts

    adapter, tok = tiny_clip.adapter, tiny_clip.tokenizer
    tiny_clip.base_fc2 = {
        f"{adapter.fc2_name(l)}.weight": adapter.fc2(l).weight.detach().clone() for l in range(adapter.num_layers)
    }
    texts = [REQUEST.target, REQUEST.source]
    base_targets = encode_texts(adapter, tok, texts)
    edit(tiny_clip, apply=True)  # first edit changes fc2 of layer 0
    edited_weights = {k: adapter.fc2(l).weight.detach().clone() for l, k in enumerate(tiny_clip.base_fc2)}
    current_targets = encode_texts(adapter, tok, texts)
    assert not torch.allclose(current_targets, base_targets, atol=1e-4)

    second = EditRequest(prompt="the prince of wales in a park", source=REQUEST.source, target=REQUEST.target)
    res = edit(tiny_clip, request=second)
    assert torch.equal(res.tensors["targets"][: len(texts)], base_targets.cpu())
    # the swap to base weights and back is exact
    for l, k in enumerate(tiny_clip.base_fc2):
        assert torch.equal(adapter.fc2(l).weight, edited_weights[k])


def test_preserve_keeps_an_earlier_edit_in_place_during_a_later_one(tiny_clip, edit):
    """--preserve (an extension; 0 = the paper) adds earlier edits' keys to C, so a later edit of the
    same layer moves the earlier edit's value at its key k_e far less."""
    from engine.methods.refact.keys import earlier_keys

    first = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
    second = EditRequest(prompt="the prince of the netherlands", source="a tulip", target="a green boat")
    model = tiny_clip
    base = {l: model.adapter.fc2(l).weight.detach().clone() for l in range(model.adapter.num_layers)}
    drift = {}
    for preserve in (0.0, 10.0):
        with torch.no_grad():
            for l, w in base.items():
                model.adapter.fc2(l).weight.copy_(w)
        hp = MOVING.with_overrides(preserve=preserve)
        a = edit(model, hparams=hp, request=first, apply=True)
        fc2 = model.adapter.fc2(hp.layer)
        k_a, v_a = a.tensors["k_e"], a.tensors["v_star"]
        assert torch.allclose(fc2(k_a), v_a, atol=1e-4)
        edit(model, hparams=hp, request=second, apply=True, preserve_requests=[first])
        with torch.no_grad():
            drift[preserve] = float((fc2(k_a) - v_a).norm() / v_a.norm())
        # the earlier key rows are the bare key k_e, then the template mean k*
        keys = earlier_keys(model, [first], hp)
        assert torch.allclose(keys[0].float(), k_a.cpu(), atol=1e-5)
    print("relative drift of the first edit's value:", drift)
    assert drift[10.0] < 0.2 * drift[0.0], drift


def test_preserve_zero_is_the_papers_edit(tiny_clip, edit):
    plain = edit(tiny_clip)
    same = edit(tiny_clip, hparams=MOVING.with_overrides(preserve=0.0), preserve_requests=[REQUEST])
    assert torch.equal(plain.delta.u, same.delta.u) and torch.equal(plain.delta.r, same.delta.r)
