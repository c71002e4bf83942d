"""Iterated joint solves (``rounds``) and the sequential insertion with null-space projection (issue 20):
the identities they promise, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from engine.delta import EditDelta
from engine.methods.refact.batch import BatchInsertConfig, compute_batch
from engine.methods.refact.edit import apply_edit, compute_values
from engine.methods.refact.hparams import HParamsError
from engine.methods.refact.joint_solve import joint_factors, sequential_factors
from engine.request import EditRequest
from tests.engine.test_batch_insert import HP, stats, value_at  # noqa: F401  (stats is a fixture)
from tests.engine.test_batch_values import requests


def keep_base(model):
    """Targets of a re-optimised v* come from the frozen base encoder (as on a loaded model)."""
    model.base_fc2 = {layer: model.adapter.fc2(layer).weight.detach().clone() for layer in range(3)}
    return model


def test_one_round_is_the_joint_solve_bit_for_bit(tiny_clip, stats):
    values = compute_values(tiny_clip, requests(6), HP, second_moment=stats.get(tiny_clip, 1))
    plain = compute_batch(tiny_clip, requests(6), HP, BatchInsertConfig(mode="joint"), moments=stats, values=values)
    once = compute_batch(tiny_clip, requests(6), HP, BatchInsertConfig(mode="joint", rounds=1), moments=stats,
                         values=values)
    (a,), (b,) = plain.delta.updates, once.delta.updates
    assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right)
    assert once.rounds == 1 and "rounds" not in once.delta.meta


def test_round_two_solves_the_shift_still_needed_on_the_edited_model(tiny_clip, stats):
    """Round r's update is the joint solve (over the same keys) of the shift each request's v* still
    needs on the model edited by rounds 1..r-1; at lambda -> 0 the final W k_e is exactly that
    re-optimised v*, and the first round's rank-2N factors are kept as they were."""
    keep_base(tiny_clip)
    reqs, hp = requests(6), HP.with_overrides(max_steps=25)
    first = compute_batch(tiny_clip, reqs, hp, BatchInsertConfig(mode="joint", lam=1e-10), moments=stats)
    two = compute_batch(tiny_clip, reqs, hp, BatchInsertConfig(mode="joint", lam=1e-10, rounds=2), moments=stats,
                        values=first.values)
    assert two.rounds == 2 and two.delta.meta["rounds"] == "2"
    (u1,), (u2,) = first.delta.updates, two.delta.updates
    assert u2.rank == 2 * u1.rank and torch.equal(u2.left[:, : u1.rank], u1.left)
    first.delta.apply(tiny_clip)
    again = compute_values(tiny_clip, reqs, hp, second_moment=stats.get(tiny_clip, 1))  # on the edited model
    shifts = torch.stack([r.tensors["delta"] for r in again.results])
    assert float(shifts.norm(dim=1).max()) > 1e-3  # round 1 left something to fix
    first.delta.revert(tiny_clip)
    two.delta.apply(tiny_clip)
    for r in again.results:
        got = value_at(tiny_clip, 1, r.tensors["k_e"])
        assert float((got - r.tensors["v_star"]).norm() / r.tensors["v_star"].norm()) < 1e-4
    assert max(o.residual for o in two.outcomes) < 1e-4


def test_rounds_stop_once_every_target_holds(tiny_clip, stats):
    """A request that stops early in round 1 and still passes its threshold on the edited model at step 0
    has a shift of exactly 0, so round 2 would add nothing: it is skipped, and the delta is round 1's
    bit for bit (the tiny model's P(target) saturates near 0.7, hence the low threshold)."""
    keep_base(tiny_clip)
    hp, reqs = HP.with_overrides(prob_threshold=0.78, max_steps=40), [requests(8)[4]]
    one = compute_batch(tiny_clip, reqs, hp, BatchInsertConfig(mode="joint"), moments=stats)
    assert one.values.results[0].early_stopped and one.values.results[0].steps_run > 1
    three = compute_batch(tiny_clip, reqs, hp, BatchInsertConfig(mode="joint", rounds=3), moments=stats,
                          values=one.values)
    assert three.rounds == 1 and "rounds" in three.delta.meta
    assert torch.equal(one.delta.updates[0].left, three.delta.updates[0].left)


def test_sequential_null_space_leaves_every_earlier_request_where_it_was(tiny_clip, stats):
    """After request i's update, the updates of requests i+1..N move neither its k_e nor its k*
    (nor an earlier applied edit's key): W k is unchanged to 1e-5."""
    first = EditRequest(prompt="a photo", subject="photo", source="a photo", target="a painting")
    single = apply_edit(tiny_clip, first, HP, moments=None, second_moment=stats.get(tiny_clip, 1))
    k_p = single.tensors["k_e"].double()
    reqs = requests(6)
    res = compute_batch(tiny_clip, reqs, HP, BatchInsertConfig(mode="sequential", null_space=True), moments=stats,
                        preserve_requests=[first])
    (upd,) = res.delta.updates
    assert upd.rank == 2 * len(reqs)
    left, right = upd.left.double(), upd.right.double()
    k_e = torch.stack([r.tensors["k_e"] for r in res.values.results]).double()
    k_star = torch.stack([r.tensors["k_star"] for r in res.values.results]).double()
    w = tiny_clip.adapter.fc2(1).weight.detach().double()
    final = w + left @ right.T
    assert float((final - w).norm()) > 1e-2  # the batch did change the layer ...
    assert float(((final - w) @ k_p).norm() / (w @ k_p).norm()) < 1e-5  # ... but not the earlier edit's key
    for i in range(len(reqs) - 1):
        after_i = w + left[:, : 2 * (i + 1)] @ right[:, : 2 * (i + 1)].T
        for k in (k_e[i], k_star[i]):
            assert float(((final - after_i) @ k).norm() / (after_i @ k).norm()) < 1e-5
    # and each request reached its v* (relative ridge on its own two keys)
    assert max(o.residual for o in res.outcomes) <= res.bound


def test_sequential_without_projection_lets_later_requests_move_earlier_ones(tiny_clip, stats):
    """The contrast, on the same keys and shifts: without the projection the later requests' updates
    move request 1's key by about as much as its own shift."""
    values = compute_values(tiny_clip, requests(6), HP, second_moment=stats.get(tiny_clip, 1))
    keys = torch.stack([torch.stack([r.tensors["k_e"], r.tensors["k_star"]]) for r in values.results])
    shift = torch.stack([r.tensors["delta"] for r in values.results]).double()
    gaps = torch.stack([shift, shift], 1)
    k1 = keys[0, 0].double()
    for null_space in (False, True):
        f = sequential_factors(stats.get(tiny_clip, 1), keys, gaps, 1e-2, null_space=null_space)
        moved = float((f.left[:, 2:] @ (f.right[:, 2:].T @ k1)).norm() / shift[0].norm())
        assert (moved < 1e-6) if null_space else (moved > 0.1)


def test_projected_joint_solve_is_the_solve_on_the_complement():
    """joint_factors(protected=P) equals the explicit solve with dW's rows restricted to P's
    orthogonal complement and C projected onto it (the d x d route it replaces)."""
    gen = torch.Generator().manual_seed(0)
    d, out = 12, 5
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    c = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)
    keys, resid = torch.randn(4, d, generator=gen, dtype=torch.float64), torch.randn(4, out, generator=gen, dtype=torch.float64)
    prot = torch.randn(3, d, generator=gen, dtype=torch.float64)
    prot = torch.cat([prot, prot[:1] + prot[1:2]])  # a dependent protected key costs nothing
    f = joint_factors(c, keys, resid, 0.1, protected=prot)
    q, _ = torch.linalg.qr(prot[:3].T, mode="complete")
    basis = q[:, 3:]
    c_b = basis.T @ c @ basis
    k_b = basis.T @ keys.T
    gram = k_b.T @ torch.linalg.solve(c_b, k_b)
    lam_abs = 0.1 * gram.diagonal().mean()
    want = resid.T @ torch.linalg.solve(gram + lam_abs * torch.eye(4, dtype=torch.float64), (basis @ torch.linalg.solve(c_b, k_b)).T)
    torch.testing.assert_close(f.left @ f.right.T, want, atol=1e-10, rtol=1e-9)
    assert float((f.left @ f.right.T @ prot.T).abs().max()) < 1e-10
    # one request alone: the sequential solve is the joint solve of its keys
    s = sequential_factors(c, keys[None], resid[None], 0.1, protected=prot)
    torch.testing.assert_close(s.left @ s.right.T, want, atol=1e-10, rtol=1e-9)


def test_bad_rounds_are_one_line(tiny_clip, stats):
    for config, match in [(BatchInsertConfig(mode="joint", rounds=0), "--rounds must be an integer in 1..10"),
                          (BatchInsertConfig(mode="spread", rounds=2), "--rounds applies to --insert joint and sequential"),
                          (BatchInsertConfig(mode="rank-one", rounds=2), "rank-one batch solves once")]:
        with pytest.raises(HParamsError, match=match):
            compute_batch(tiny_clip, requests(2), HP, config, moments=stats)


def test_a_sequential_delta_round_trips(tiny_clip, stats, tmp_path):
    res = compute_batch(tiny_clip, requests(3), HP, BatchInsertConfig(mode="sequential", null_space=True, rounds=2),
                        moments=stats)
    back = EditDelta.load(tmp_path / "s.safetensors", expected_sha256=res.delta.save(tmp_path / "s.safetensors"))
    assert back.meta["insert_mode"] == "sequential" and back.meta["null_space"] == "True"
    assert torch.equal(back.updates[0].left, res.delta.updates[0].left)
