"""Decoder-LM adapter: the split forward is the model's own, per family (RoPE, GQA, sliding windows,
Gemma-2's soft-capping and extra norms, GLM's fused gate_up_proj, Qwen2.5-VL's text model)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from engine.adapters import LLMAdapter, adapter_for
from engine.methods.refact.hparams import HParamsError
from engine.readout import Readout, ReadoutError
from engine.slots import check_slot_layer, keep_editable_fp32

torch.set_num_threads(1)

_BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
_TEXT_VL = dict(_BASE, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})


def _vl():
    cfg = T.Qwen2_5_VLConfig(text_config=dict(_TEXT_VL, model_type="qwen2_5_vl_text"),
                             vision_config=dict(depth=1, hidden_size=16, out_hidden_size=32, num_heads=2,
                                                intermediate_size=16))
    return T.Qwen2_5_VLForConditionalGeneration(cfg)


FAMILIES = {
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**_BASE)),
    "mistral": lambda: T.MistralModel(T.MistralConfig(**_BASE, sliding_window=3)),
    "qwen2": lambda: T.Qwen2Model(T.Qwen2Config(**_BASE)),
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**_BASE)),
    "gemma2": lambda: T.Gemma2Model(T.Gemma2Config(**_BASE, sliding_window=3, attn_logit_softcapping=5.0,
                                                     query_pre_attn_scalar=8)),
    "glm": lambda: T.GlmModel(T.GlmConfig(**_BASE, partial_rotary_factor=0.5)),
    "qwen2_5_vl": _vl,
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name]().eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 96, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding on one row
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _hidden_states(model, batch, hook_layer=None, index=None, delta=None):
    """The model's own hidden_states, optionally with delta added to one layer's MLP output by a hook."""
    handle = None
    if hook_layer is not None:
        rows = torch.arange(batch["input_ids"].shape[0])

        def hook(_module, _inputs, output):
            output = output.clone()
            output[rows, index] += delta
            return output

        handle = adapter_for(model).mlp(hook_layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(**batch, output_hidden_states=True).hidden_states
    finally:
        if handle is not None:
            handle.remove()


def _reference(hs, readout: Readout, mask: torch.Tensor) -> torch.Tensor:
    seq = torch.cat([hs[k] for k in readout.layers], dim=-1)
    w = mask.float().unsqueeze(-1)
    return (seq * w).sum(1) / w.sum(1)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pieces_equal_the_model_layers(name):
    model = _model(name)
    adapter = adapter_for(model)
    assert isinstance(adapter, LLMAdapter) and adapter.num_layers == 4
    batch = _batch()
    hs = _hidden_states(model, batch)
    with torch.no_grad():
        hidden, ctx = adapter.embed(batch)
        torch.testing.assert_close(hidden, hs[0], rtol=0, atol=0)
        for i in range(adapter.num_layers):
            full = adapter.run_layer(i, hidden, ctx)
            residual, key = adapter.split_layer(i, hidden, ctx)
            assert key.shape[-1] == adapter.key_size == adapter.fc2(i).in_features
            torch.testing.assert_close(adapter.finish_layer(i, residual, adapter.fc2(i)(key)), full, rtol=0, atol=1e-6)
            expect = hs[i + 1] if i < adapter.num_layers - 1 else hs[-1]
            got = full if i < adapter.num_layers - 1 else adapter.stack.norm(full)
            torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)
            hidden = full


@pytest.mark.parametrize("name, spec, layer", [
    ("llama", "hidden:-1", 1), ("mistral", "hidden:-2", 2), ("qwen3", "hidden:1,2,3", 0), ("gemma2", "hidden:-2", 1),
    ("glm", "hidden:-1", 3), ("qwen2_5_vl", "hidden:2,4", 1), ("qwen2", "hidden:-1/drop=2", 2),
])
def test_truncated_forward_equals_full(name, spec, layer):
    model = _model(name)
    adapter = adapter_for(model)
    adapter.set_readout(Readout.parse(spec))
    batch = _batch()
    index = torch.tensor([5, 3, 2])  # the last row's subject sits right before its padding
    delta = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(3))
    read_mask = adapter.read_mask(batch)
    with torch.no_grad():
        state = adapter.prefix(batch, layer)
        plain = adapter.suffix(state, state.mlp_out)
        torch.testing.assert_close(plain, _reference(_hidden_states(model, batch), adapter.readout, read_mask),
                                   rtol=0, atol=1e-5)
        step = adapter.stepper(state, index)
        reference = _reference(_hidden_states(model, batch, layer, index, delta), adapter.readout, read_mask)
        torch.testing.assert_close(step(delta), reference, rtol=0, atol=1e-5)
        per_row = torch.stack([delta, 2 * delta, -delta])
        rows = [_reference(_hidden_states(model, batch, layer, index, d), adapter.readout, read_mask)[r]
                for r, d in enumerate(per_row)]
        torch.testing.assert_close(step(per_row), torch.stack(rows), rtol=0, atol=1e-5)
    assert (step(delta) - plain).abs().max() > 1e-3  # causal: the subject token and later ones moved


def test_causal_edit_never_reaches_earlier_tokens():
    model = _model("qwen3")
    batch = _batch()
    index = torch.tensor([5, 3, 2])
    delta = torch.randn(32, generator=torch.Generator().manual_seed(4))
    plain = _hidden_states(model, batch)[-1]
    shifted = _hidden_states(model, batch, 1, index, delta)[-1]
    for r, i in enumerate(index.tolist()):
        torch.testing.assert_close(shifted[r, :i], plain[r, :i], rtol=0, atol=1e-6)
        assert (shifted[r, i:] - plain[r, i:]).abs().max() > 1e-4


def test_layers_after_the_deepest_tap_are_refused():
    adapter = adapter_for(_model("qwen3"))
    adapter.set_readout(Readout.parse("hidden:1,2"))  # hidden_states 2 = block 1's output
    assert adapter.last_editable == 1
    check_slot_layer(adapter, 1, "text_encoder")
    with pytest.raises(HParamsError, match=r"^layer 2 is out of range for text_encoder \(editable: layers 0\.\.1 of 4 "
                                           r"\(layers after 1 cannot reach its hidden readout\)\)"):
        check_slot_layer(adapter, 2, "text_encoder")


def test_readout_spec_round_trip_and_bad_specs():
    for spec in ("hidden:9,18,27", "hidden:-2", "hidden:-1/drop=34"):
        assert Readout.parse(spec).spec() == spec
    assert Readout.parse("hidden:-1/drop=34").drop == 34
    for bad in ("hidden:", "hidden:a", "hidden:-1/drop=x"):
        with pytest.raises(ReadoutError, match="not valid"):
            Readout.parse(bad)
    with pytest.raises(ReadoutError, match=r"hidden_states\[9\] does not exist; this encoder has hidden_states 0\.\.4"):
        adapter_for(_model("llama")).set_readout(Readout.parse("hidden:9"))


def test_bf16_encoder_keeps_editable_matrices_fp32_and_runs():
    model = _model("gemma2").to(torch.bfloat16)
    adapter = adapter_for(model)
    batch = _batch()
    before = _hidden_states(model, batch)[-1]
    keep_editable_fp32(adapter)
    assert all(adapter.fc2(i).weight.dtype == torch.float32 for i in range(adapter.num_layers))
    after = _hidden_states(model, batch)[-1]  # the model's own forward still runs, in bf16
    assert after.dtype == torch.bfloat16
    torch.testing.assert_close(after.float(), before.float(), rtol=0, atol=0.1)
    with torch.no_grad():
        state = adapter.prefix(batch, 1)
    assert state.key.dtype == state.mlp_out.dtype == torch.float32
    w = adapter.fc2(1).weight
    tiny = 1e-4 * torch.ones(w.shape[0], 1) @ torch.ones(1, w.shape[1])
    assert ((w + tiny) != w).any()  # a small update survives in fp32 (it rounds away in bf16)


def test_second_moment_memory_is_stated_and_refused_when_it_cannot_fit():
    from types import SimpleNamespace

    from engine.covariance import check_second_moment_fits
    from engine.errors import EngineError

    mistral_small = SimpleNamespace(key_size=32768, device=torch.device("cpu"))
    # fp32 C (4.3 GB) + its fp64 factor (8.6 GB); engine.admission.MomentMemory
    assert check_second_moment_fits(mistral_small, free_bytes=2**40) == 12 * 32768 * 32768
    with pytest.raises(EngineError, match=r"^the second moment of a 32768-wide key needs 12\.0 GiB .* but cpu has "
                                          r"8\.0 GiB free; use a device with more memory or a low-rank C"):
        check_second_moment_fits(mistral_small, free_bytes=8 * 2**30)
