"""TIME / UCE / ReFACT behind the method interface on the tiny SD1 pipeline: closed-form identities,
bit-exact revert, delta round trip, one-line refusals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.request import EditRequest

REQ = EditRequest(prompt="A banana", source="A banana", target="A blue banana")


@pytest.fixture(scope="module")
def model(model_dir):
    from engine.models import load_model

    return load_model(model_dir, device="cpu")


def _weights(mods):
    return {k: v.weight.detach().clone() for k, v in mods.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach())


def test_time_maps_source_embeddings_to_aligned_targets_when_lambda_goes_to_zero(model):
    from engine.delta import applied
    from engine.methods import get_method
    from engine.methods.closed_form.time import TimeHParams

    time_m = get_method("time")
    h = TimeHParams(lam=1e-8, augment=False, padding=False)
    c, g = time_m.embeddings(model, REQ, h)
    assert c.shape[0] == 4  # BOS, a, banana, EOS: fewer columns than the width 32
    mods = time_m.target_modules(model, h)
    assert mods and all(k.endswith("attn2.to_v") for k in mods)
    w0 = _weights(mods)
    delta = time_m.compute(model, [REQ], h).delta
    assert {u.component for u in delta.updates} == {"unet"}
    with applied(model, delta):
        for k, mod in mods.items():
            assert _rel(mod.weight.double() @ c.T, w0[k].double() @ g.T) < 1e-4
    assert all(torch.equal(mods[k].weight, w0[k]) for k in mods)  # bit-exact revert


def test_time_default_satisfies_the_normal_equations(model):
    """W' (lam I + C C^T) = lam W + V* C^T over all 77 positions of the prompt and its augmentations."""
    from engine.delta import applied
    from engine.methods import get_method
    from engine.methods.closed_form.time import TimeHParams, augment

    time_m = get_method("time")
    h = TimeHParams(with_to_k=True)
    assert augment("A banana") == ["A banana", "A photo of a banana", "An image of a banana", "A picture of a banana"]
    c, g = time_m.embeddings(model, REQ, h)
    assert c.shape[0] == 4 * 77
    mods = time_m.target_modules(model, h)
    assert any(k.endswith("to_k") for k in mods) and any(k.endswith("to_v") for k in mods)
    w0 = _weights(mods)
    delta = time_m.compute(model, [REQ], h).delta
    assert max(u.rank for u in delta.updates) <= c.shape[1]  # stored at rank <= width, not 308
    a = h.lam * torch.eye(c.shape[1], dtype=torch.float64) + c.T @ c
    with applied(model, delta):
        for k, mod in mods.items():
            w = w0[k].double()
            assert _rel(mod.weight.double() @ a, h.lam * w + (w @ g.T) @ c) < 1e-4
    assert all(torch.equal(mods[k].weight, w0[k]) for k in mods)


def test_uce_guides_the_concept_to_the_target_and_keeps_preserved_ones(model, tmp_path):
    from engine.delta import EditDelta, applied
    from engine.methods import get_method
    from engine.methods.closed_form.uce import UCEHParams, last_content

    uce = get_method("uce")
    h = UCEHParams(lam=1e-8, preserve=("A cherry",))
    e = last_content(model, ["A banana", "A blue banana", "A cherry"])
    mods = uce.target_modules(model, h)
    assert len(mods) == 8  # to_k and to_v of the 4 transformer blocks
    w0 = _weights(mods)
    delta = uce.compute(model, [REQ], h).delta
    path = tmp_path / "uce.safetensors"
    sha = delta.save(path)
    loaded = EditDelta.load(path, expected_sha256=sha)
    assert [u.module for u in loaded.updates] == [u.module for u in delta.updates]
    with applied(model, loaded):
        for k, mod in mods.items():
            w, w_new = w0[k].double(), mod.weight.double()
            assert _rel(w_new @ e[0], w @ e[1]) < 1e-4      # concept -> guide
            assert _rel(w_new @ e[2], w @ e[2]) < 1e-4      # preserved concept unchanged
    assert all(torch.equal(mods[k].weight, w0[k]) for k in mods)
    # the default lam = 0.5 moves the concept only part of the way
    d = uce.compute(model, [REQ], UCEHParams()).delta
    with applied(model, d):
        k = next(iter(mods))
        moved = mods[k].weight.double() @ e[0]
        ratio = (moved - w0[k].double() @ e[0]).norm() / (w0[k].double() @ (e[1] - e[0])).norm()
        assert 0.01 < float(ratio.detach()) < 1.0


def test_refact_wrapper_is_compute_edit(model):
    from engine.methods import get_method
    from engine.methods.refact.edit import compute_edit
    from engine.methods.refact.hparams import ReFACTHParams

    req = EditRequest(prompt="The Prince of Wales", source="Prince Charles", target="Prince William")
    h = ReFACTHParams(layer=2, max_steps=3)
    a = get_method("refact").compute(model, [req], h).delta
    b = compute_edit(model, req, h).delta
    assert torch.equal(a.u, b.u) and torch.equal(a.r, b.r) and a.meta["method"] == "refact"


def test_refusals_and_unknown_methods_are_one_line():
    from engine.methods import MethodError, MethodRefusedError, get_method

    with pytest.raises(MethodError, match="unknown edit method 'rome'; use one of refact, time, uce"):
        get_method("rome")
    flux = SimpleNamespace(pipeline=type("FluxPipeline", (), {"transformer": torch.nn.Linear(2, 2)})())
    for name in ("time", "uce"):
        with pytest.raises(MethodRefusedError) as info:
            get_method(name).check(flux)
        msg = str(info.value)
        assert "\n" not in msg and "FluxPipeline" in msg and "transformer, not a unet" in msg
    with pytest.raises(MethodRefusedError, match="text encoder only"):
        get_method("time").check(SimpleNamespace(pipeline=None))
    from engine.methods.closed_form.time import TimeHParams

    with pytest.raises(MethodError, match="unknown TIME hyperparameter"):
        TimeHParams.from_dict({"layer": 3})
