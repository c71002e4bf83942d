"""The method contract on tiny pipelines: every method and path returns an EditOutcome whose insert
applies exactly its delta (ReFACT: W k_e == v* per slot) and whose undo restores bit for bit."""

from __future__ import annotations

import pytest
import torch

from engine.methods import MethodError, get_method
from engine.methods.base import EditContext
from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest

REQS = [EditRequest(prompt="The Prince of Wales", source="Prince Charles", target="Prince William"),
        EditRequest(prompt="the old dog", subject="dog", source="a dog", target="a red cat")]
HP = ReFACTHParams(layer=1, lr=0.2, max_steps=4, prob_threshold=0.999)


def _state(model) -> dict[str, torch.Tensor]:
    return {f"{s.name}.{k}": v.clone() for s in model.slots for k, v in s.snapshot_fc2().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sdxl(pipeline_dir_for):
    from engine.models import load_model

    return load_model(pipeline_dir_for("sdxl"), device="cpu", with_pipeline=False)


def test_one_request_edits_every_slot_and_insert_checks_each(sdxl):
    from engine.covariance import SecondMomentStore

    steps: list[tuple[str, int]] = []
    ctx = EditContext(second_moments=SecondMomentStore(None), n_samples=16,
                      on_step=lambda slot, i, ev: steps.append((slot, i)))
    base = _state(sdxl)
    outcome = get_method("refact").compute(sdxl, REQS[:1], HP, ctx)
    assert _same(_state(sdxl), base)  # compute never touches the weights
    assert [r.slot for r in outcome.slots] == ["text_encoder", "text_encoder_2"]
    assert {s for s, _ in steps} == {"text_encoder", "text_encoder_2"} and {i for _, i in steps} == {0}
    assert outcome.p_target == min(r.p_target for r in outcome.slots) and len(outcome.requests) == 1
    undo = outcome.insert(sdxl)
    detail = outcome.detail
    for row, e in zip(outcome.slots, detail.edits):
        w = sdxl.slot(row.slot).adapter.fc2(row.layer)
        got = w(e.result.tensors["k_e"].reshape(1, -1)).reshape(-1)
        assert float((got - e.result.tensors["v_star"]).norm() / e.result.tensors["v_star"].norm()) < 1e-4
        assert row.verify_error is not None and row.verify_error < 1e-4 and row.weights_hash
    assert not _same(_state(sdxl), base)
    undo()
    assert _same(_state(sdxl), base)


def test_a_refused_insert_restores_every_slot(sdxl):
    from engine.covariance import SecondMomentStore
    from engine.errors import InsertionRefusedError

    base = _state(sdxl)
    outcome = get_method("refact").compute(sdxl, REQS[:1], HP, EditContext(second_moments=SecondMomentStore(None),
                                                                          n_samples=16))
    outcome.detail.edits[1].result.tensors["v_star"] += 10.0  # slot 2 can no longer meet its v*
    with pytest.raises(InsertionRefusedError, match="^text_encoder_2: after the update W k_e misses v"):
        outcome.insert(sdxl)
    assert _same(_state(sdxl), base)


@pytest.mark.parametrize("mode", ["joint"])  # rank-one sums of conflicting keys are refused (guard.py)
def test_n_requests_are_one_batch_delta_with_a_row_per_request(sdxl, mode):
    from engine.covariance import SecondMomentStore
    from engine.methods.refact.batch import BatchInsertConfig

    seen: set[tuple[str, int]] = set()
    ctx = EditContext(second_moments=SecondMomentStore(None), n_samples=16, insertion=BatchInsertConfig(mode=mode),
                      on_step=lambda slot, i, ev: seen.add((slot, i)))
    base = _state(sdxl)
    outcome = get_method("refact").compute(sdxl, REQS, HP, ctx)
    assert seen == {("text_encoder", 0), ("text_encoder", 1)}  # a batch edits the first slot
    assert [r.request for r in outcome.requests] == REQS and all(r.residual is not None for r in outcome.requests)
    assert outcome.p_target == pytest.approx(sum(r.p_target for r in outcome.requests) / 2)
    assert (outcome.layer, outcome.delta.meta["insert_mode"]) == (1, mode)
    undo = outcome.insert(sdxl)
    assert not _same(_state(sdxl), base)
    undo()
    assert _same(_state(sdxl), base)


def test_compute_each_gives_one_edit_per_request_over_every_slot_equal_to_single_edits(sdxl):
    from engine.covariance import SecondMomentStore

    ctx = EditContext(second_moments=SecondMomentStore(None), n_samples=16)
    method = get_method("refact")
    each = method.compute_each(sdxl, REQS, HP, ctx)
    for req, outcome in zip(REQS, each):
        single = method.compute(sdxl, [req], HP, ctx)
        assert [(r.slot, r.layer) for r in outcome.slots] == [(r.slot, r.layer) for r in single.slots]
        for a, b in zip(outcome.delta.updates, single.delta.updates):
            torch.testing.assert_close(a.matrix(), b.matrix(), rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def time_edit(model_dir):
    """The tiny SD1 pipeline, TIME, the matrices it may edit (with copies) and one computed outcome."""
    from engine.models import load_model

    model = load_model(model_dir, device="cpu")
    method = get_method("time")
    hp = method.default_hparams(model)
    mods = method.target_modules(model, hp)
    before = {k: m.weight.detach().clone() for k, m in mods.items()}
    return model, method, hp, mods, before, method.compute(model, [REQS[0]], hp)


def test_closed_form_outcome_has_the_proxy_p_target_and_a_bit_exact_undo(time_edit):
    model, method, hp, mods, before, outcome = time_edit
    assert outcome.slots == [] and 0.0 <= outcome.p_target <= 1.0 and outcome.module.startswith("unet: ")
    undo = outcome.insert(model)
    assert any(not torch.equal(m.weight, before[k]) for k, m in mods.items())
    undo()
    assert all(torch.equal(m.weight, before[k]) for k, m in mods.items())
    with pytest.raises(MethodError, match="one request at a time"):
        method.compute(model, REQS, hp)


def test_an_outcome_that_changes_no_weight_is_refused_for_every_method(time_edit):
    """Issue 21 item 2: the general guard. A TIME edit whose update is zero (e.g. a huge preserve weight)
    is refused at insert, not committed as an applied edit; the weights stay bit for bit."""
    import dataclasses

    from engine.delta import EditDelta
    from engine.errors import InsertionRefusedError

    model, _, _, mods, before, outcome = time_edit
    zero = [dataclasses.replace(u, left=torch.zeros_like(u.left)) for u in outcome.delta.updates]
    empty = dataclasses.replace(outcome, delta=EditDelta(zero, outcome.delta.meta))
    with pytest.raises(InsertionRefusedError, match="changes no weight"):
        empty.insert(model)
    assert all(torch.equal(m.weight, before[k]) for k, m in mods.items())
