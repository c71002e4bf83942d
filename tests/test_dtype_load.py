"""Loading in float16 / bfloat16 (``load_model(dtype=)``): the weights arrive in that dtype directly,
the editable T5 matrices stay fp32, and an edit's update is computed in fp32 and rounded once, so
W k_e = v* holds to a bound set by the dtype (measured: docs/ADAPTERS.md)."""

from __future__ import annotations

import pytest
import torch

# |W k_e - v*| / |v*| after a rank-one insertion, per dtype of the loaded CLIP fc2 (one rounding of W
# and of the output: bf16 keeps 8 bits of mantissa, fp16 11)
BOUND = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.5e-2}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pipeline_loads_in_the_dtype_with_t5_wo_kept_fp32(dtype, pipeline_dir_for):
    from engine.models import load_model

    model = load_model(pipeline_dir_for("flux"), device="cpu", dtype=dtype)
    want = getattr(torch, dtype)
    assert {p.dtype for p in model.pipeline.transformer.parameters()} == {want}
    assert {p.dtype for p in model.slot("text_encoder").text_encoder.parameters()} == {want}
    t5 = model.slot("text_encoder_2")
    wo = {f"{n}.weight" for n in t5.fc2_modules()}
    for name, p in t5.text_encoder.named_parameters():
        assert p.dtype == (torch.float32 if name in wo else want), name


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_insertion_holds_w_k_e_equal_v_star_to_the_dtype_bound(dtype, pipeline_dir_for):
    from engine.delta import EditDelta
    from engine.models import load_model

    model = load_model(pipeline_dir_for("sd1"), device="cpu", with_pipeline=False, dtype=dtype)
    slot = model.slot("text_encoder")
    name, lin = list(slot.fc2_modules().items())[2]
    g = torch.Generator().manual_seed(0)
    k = torch.randn(lin.in_features, generator=g)
    w = lin.weight.detach().float()
    v = w @ k + torch.randn(lin.out_features, generator=g) * (w @ k).norm() / lin.out_features ** 0.5
    u = k / k.norm()
    r = (v - w @ k) / (u @ k)
    before = lin.weight.detach().clone()
    EditDelta(layer=2, module=name, u=u, r=r).apply(slot.text_encoder)
    # the update is added in fp32 and rounded once into the stored dtype
    assert torch.equal(lin.weight, (before.float() + torch.outer(r, u)).to(before.dtype))
    with torch.no_grad():
        out = lin(k.to(lin.weight.dtype)[None])[0].float() - (lin.bias.float() if lin.bias is not None else 0)
    assert float((out - v).norm() / v.norm()) < BOUND[dtype]


def test_unknown_dtype_is_refused(pipeline_dir_for):
    from engine.errors import EngineError
    from engine.models import load_model

    with pytest.raises(EngineError, match="unknown dtype 'int8'"):
        load_model(pipeline_dir_for("sd1"), device="cpu", dtype="int8")
