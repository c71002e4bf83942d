"""Encoder slots, readouts, the T5 adapter and multi-slot edits on tiny SDXL / SD3 / FLUX pipelines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5EncoderModel

sys.path.insert(0, str(Path(__file__).parent))
from family_helpers import cached_model as _model  # noqa: E402
from family_helpers import denoiser_inputs, edit_moves  # noqa: E402

from engine.adapters import adapter_for  # noqa: E402
from engine.covariance import SecondMomentStore  # noqa: E402
from engine.delta import EditDelta  # noqa: E402
from engine.errors import ModelFormatError, TokenizationError  # noqa: E402
from engine.methods.refact.hparams import HParamsError, ReFACTHParams  # noqa: E402
from engine.methods.refact.model_edit import SlotSelectionError, apply_model_edit, compute_model_edit  # noqa: E402
from engine.methods.refact.values import lookup_index  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.readout import Readout  # noqa: E402
from engine.request import EditRequest  # noqa: E402
from engine.tokens import locate_subject  # noqa: E402

REQ = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
TEXTS = ["the prince of wales", "a red dog", "a bowl of soup"]
FAMILIES = ("sdxl", "sd3", "flux")
def _hp(model, layer: int = 1, **kw) -> ReFACTHParams:
    base = dict(layer=layer, lr=0.5, weight_decay=0.0, max_steps=30, templates=(),
                slot_layers=tuple((s.name, layer) for s in model.slots))
    return ReFACTHParams(**{**base, **kw})


# ----------------------------------------------------------------------------- T5 adapter


def _tiny_t5(layers: int = 3) -> T5EncoderModel:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=layers, num_heads=4,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                   relative_attention_max_distance=20, dropout_rate=0.0)
    return T5EncoderModel(cfg).eval()


@pytest.mark.parametrize("use_mask", [True, False])
def test_t5_truncated_forward_equals_full(use_mask):
    model = _tiny_t5()
    adapter = adapter_for(model, pad_to=16, use_mask=use_mask)
    ids = torch.randint(3, 300, (2, 16))
    mask = torch.zeros(2, 16, dtype=torch.long)
    mask[0, :5], mask[1, :9] = 1, 1
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask if use_mask else None).last_hidden_state
        want = (full * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(adapter.pooled(batch), want, rtol=0, atol=1e-5)
        for layer in range(adapter.num_layers):
            state = adapter.prefix(batch, layer)
            torch.testing.assert_close(adapter.suffix(state, state.mlp_out), want, rtol=0, atol=1e-5)
            # the key is what wo reads: wo(key) is the FF block's output
            torch.testing.assert_close(adapter.fc2(layer)(state.key), state.mlp_out, rtol=0, atol=1e-6)


def test_t5_delta_matches_a_hooked_forward():
    model = _tiny_t5()
    adapter = adapter_for(model, pad_to=12, use_mask=False)
    batch = {"input_ids": torch.randint(3, 300, (1, 12)), "attention_mask": torch.ones(1, 12, dtype=torch.long)}
    batch["attention_mask"][0, 6:] = 0
    delta = torch.randn(32)
    state = adapter.prefix(batch, 1)
    step = adapter.stepper(state, torch.tensor([3]))
    hook = adapter.mlp(1).register_forward_hook(lambda m, i, o: o.index_put((torch.tensor([0]), torch.tensor([3])), delta, accumulate=True))
    try:
        with torch.no_grad():
            full = model(input_ids=batch["input_ids"]).last_hidden_state
    finally:
        hook.remove()
    m = batch["attention_mask"][..., None].float()
    torch.testing.assert_close(step(delta), (full * m).sum(1) / m.sum(1), rtol=0, atol=1e-5)


def test_t5_subject_index_without_bos(pipeline_dir_for):
    t5 = _model(pipeline_dir_for, "flux").slot("text_encoder_2")
    located = locate_subject(t5.tokenizer, "{}, a portrait", "the prince of wales", "prince", t5.max_length)
    ids = t5.tokenizer(located.text)["input_ids"]
    assert ids[-1] == t5.tokenizer.eos_token_id and located.index == len(t5.tokenizer("the prince", add_special_tokens=False)["input_ids"]) - 1
    assert t5.tokenizer.decode(ids[: located.index + 1]).strip().endswith("prince")


def test_low_precision_t5_keeps_edited_matrix_fp32():
    model = _tiny_t5().to(torch.bfloat16)
    from engine.slots import keep_editable_fp32

    adapter = adapter_for(model, pad_to=16, use_mask=False)
    keep_editable_fp32(adapter)
    assert all(adapter.fc2(i).weight.dtype == torch.float32 for i in range(adapter.num_layers))
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- readouts


@pytest.mark.parametrize("arch", FAMILIES)
def test_readouts_are_what_encode_prompt_feeds_the_denoiser(pipeline_dir_for, arch):
    model = _model(pipeline_dir_for, arch)
    got = {s.name: s.adapter.encode(s.tokenizer, TEXTS) for s in model.slots}
    want = denoiser_inputs(model, TEXTS)
    assert list(got) == list(want) == model.slot_names
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["final", "pooler", "penultimate", "penultimate+embeds"])
def test_clip_fast_stepper_equals_suffix_under_every_readout(pipeline_dir_for, kind):
    slot = _model(pipeline_dir_for, "sdxl").slot("text_encoder_2")
    adapter = slot.adapter
    saved = adapter.readout
    adapter.set_readout(Readout(kind, 0.7))
    try:
        located = [locate_subject(slot.tokenizer, t, "the prince of wales", "prince", 77) for t in ("{}", "a photo of {} today")]
        batch = adapter.tokenize(slot.tokenizer, [p.text for p in located])
        delta = torch.randn(adapter.hidden_size)
        for layer in range(adapter.last_editable + 1):
            state = adapter.prefix(batch, layer)
            idx = lookup_index(located, state.mlp_out.device)
            fast = adapter.stepper(state, idx)(delta)
            slow = adapter.suffix(state, state.mlp_out.index_put((torch.arange(2), idx), delta.expand(2, -1), accumulate=True))
            torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
        # the deepest editable layer still moves the readout (an edit there is never a no-op)
        state = adapter.prefix(batch, adapter.last_editable)
        idx = lookup_index(located, state.mlp_out.device)
        step = adapter.stepper(state, idx)
        assert float((step(delta) - step(torch.zeros_like(delta))).abs().max()) > 1e-4
    finally:
        adapter.set_readout(saved)


def test_penultimate_readout_makes_the_last_layer_uneditable(pipeline_dir_for):
    model = _model(pipeline_dir_for, "sdxl")
    te1 = model.slot("text_encoder")
    # hidden_states[-2] at EOS is layer n-2's output; an edit at the subject token of layer n-2
    # reaches EOS only through a later layer's attention, so n-2 is out of reach too
    assert list(te1.editable_layers) == list(range(te1.num_layers - 2))
    hp = _hp(model).with_overrides(slot_layers=(("text_encoder", te1.num_layers - 1),))
    with pytest.raises(HParamsError, match=r"for text_encoder \(editable: layers 0\.\.\d+ .*penultimate"):
        compute_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=16)


# ----------------------------------------------------------------------------- multi-slot edits


@pytest.mark.parametrize("arch", FAMILIES)
def test_one_edit_moves_every_slot_toward_the_target_and_reverts_exactly(pipeline_dir_for, arch):
    model = _model(pipeline_dir_for, arch)
    base_hashes = model.weights_hashes()
    before = denoiser_inputs(model, TEXTS)
    res = apply_model_edit(model, REQ, _hp(model), moments=SecondMomentStore(None), n_samples=64)
    assert [e.slot for e in res.edits] == model.slot_names
    assert [u.component for u in res.delta.updates] == model.slot_names
    after = denoiser_inputs(model, TEXTS)
    for e in res.edits:
        assert e.result.verify_error < 1e-4, e.slot  # W k_e == v* per slot
        assert e.weights_hash == model.slot(e.slot).encoder_hash() != base_hashes[e.slot]
        cos, ratio = edit_moves(before[e.slot], after[e.slot])
        assert cos > 0.15, (e.slot, cos)
        assert ratio < 0.6, (e.slot, ratio)
    model.restore_base()
    assert model.weights_hashes() == base_hashes


def test_delta_round_trip_applies_every_slot(pipeline_dir_for, tmp_path):
    model = _model(pipeline_dir_for, "flux")
    base = model.weights_hashes()
    res = apply_model_edit(model, REQ, _hp(model, max_steps=3), moments=SecondMomentStore(None), n_samples=16)
    edited = model.weights_hashes()
    res.delta.save(tmp_path / "d.safetensors")
    loaded = EditDelta.load(tmp_path / "d.safetensors")
    assert set(json.loads(loaded.meta["slots"])) == set(model.slot_names)
    model.restore_base()
    assert model.weights_hashes() == base
    loaded.apply(model)
    assert model.weights_hashes() == edited
    model.restore_base()


def test_slot_subset_and_per_slot_layers(pipeline_dir_for):
    model = _model(pipeline_dir_for, "sd3")
    hp = _hp(model, max_steps=2).with_overrides(slots=("text_encoder_3", "text_encoder"),
                                                 slot_layers=(("text_encoder", 0), ("text_encoder_3", 2)))
    res = compute_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=16)
    assert [(e.slot, e.layer) for e in res.edits] == [("text_encoder", 0), ("text_encoder_3", 2)]
    assert res.delta.updates[1].module == "encoder.block.2.layer.1.DenseReluDense.wo"


@pytest.mark.parametrize("hp_kw, error, match", [
    (dict(slots=("text_encoder_9",)), SlotSelectionError, "no encoder slot 'text_encoder_9'; its slots are text_encoder, text_encoder_2"),
    (dict(slot_layers=(("text_encoder_2", 3),)), HParamsError, r"layer 3 is out of range for text_encoder_2 \(editable: layers 0\.\.2 of 3\)"),
])
def test_bad_slot_selection_is_one_line_and_changes_nothing(pipeline_dir_for, hp_kw, error, match):
    model = _model(pipeline_dir_for, "flux")
    base = model.weights_hashes()
    with pytest.raises(error, match=match):
        apply_model_edit(model, REQ, _hp(model).with_overrides(**hp_kw), moments=SecondMomentStore(None), n_samples=8)
    assert model.weights_hashes() == base


def test_text_over_a_slot_limit_names_the_slot(pipeline_dir_for):
    model = _model(pipeline_dir_for, "sdxl")
    long = EditRequest(prompt="the prince of wales", source="x", target="dog " * 80)
    with pytest.raises(TokenizationError, match="^text_encoder: .*more than the encoder's 77"):
        apply_model_edit(model, long, _hp(model), moments=SecondMomentStore(None), n_samples=8)


def test_t5_limit_is_the_pipeline_length(pipeline_dir_for):
    model = _model(pipeline_dir_for, "sd3")
    assert model.slot("text_encoder_3").max_length == 256
    assert _model(pipeline_dir_for, "flux").slot("text_encoder_2").max_length == 512


# ----------------------------------------------------------------------------- loading


def _copy_pipeline(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_unsupported_pipeline_class_is_one_line(pipeline_dir_for, tmp_path):
    folder = _copy_pipeline(pipeline_dir_for("sdxl"), tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="'KandinskyPipeline'; supported pipeline classes: StableDiffusionPipeline"):
        load_model(folder, device="cpu", with_pipeline=False)


@pytest.mark.parametrize("with_pipeline", [False, True])
def test_missing_encoder_folder_is_one_line(pipeline_dir_for, tmp_path, with_pipeline):
    import shutil

    folder = _copy_pipeline(pipeline_dir_for("sd3"), tmp_path / "p")
    shutil.rmtree(folder / "text_encoder_3")
    with pytest.raises(ModelFormatError, match=r"\(sd3\) has no text_encoder_3 folder; a sd3 pipeline needs text_encoder, text_encoder_2, text_encoder_3"):
        load_model(folder, device="cpu", with_pipeline=with_pipeline)


def test_encoder_only_load_matches_the_pipeline_load(pipeline_dir_for):
    fast = load_model(pipeline_dir_for("sd3"), device="cpu", with_pipeline=False)
    full = _model(pipeline_dir_for, "sd3")
    assert fast.family == full.family == "sd3" and fast.weights_hashes() == full.weights_hashes()
    assert [s.readout.spec() for s in fast.slots] == ["penultimate+embeds"] * 2 + ["mean"]
    assert full.component_module("transformer") is full.pipeline.transformer


def test_second_moments_are_keyed_by_slot_and_mode(pipeline_dir_for, tmp_path):
    model = _model(pipeline_dir_for, "flux")
    store = SecondMomentStore(tmp_path)
    for slot in model.slots:
        store.get(slot, 0, n_samples=8)
    entries = sorted((e.slot, e.mode) for e in store.entries())
    assert entries == [("text_encoder", "longest"), ("text_encoder_2", "pad512-unmasked")]


def test_gpu_advice_names_big_keys_only():
    from types import SimpleNamespace

    from engine.covariance import gpu_advice

    cpu = torch.device("cpu")
    advice = gpu_advice(SimpleNamespace(key_size=10240, device=cpu))
    assert advice is not None and "10240-wide" in advice and "800 MiB" in advice and "--device cuda" in advice
    assert gpu_advice(SimpleNamespace(key_size=3072, device=cpu)) is None


def test_bf16_flux_edits_t5_in_fp32(tmp_path):
    from engine.builder import build_pipeline

    model = load_model(build_pipeline(tmp_path / "flux", "tiny", 0, arch="flux", dtype="bfloat16"), device="cpu")
    t5 = model.slot("text_encoder_2")
    assert model.text_encoder.dtype == torch.bfloat16
    assert t5.text_encoder.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.bfloat16
    assert all(t5.adapter.fc2(i).weight.dtype == torch.float32 for i in range(t5.num_layers))
    hp = _hp(model, max_steps=4).with_overrides(slots=("text_encoder_2",))
    res = apply_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=16)
    assert res.edits[0].result.verify_error < 1e-4  # a bf16 wo would miss v* by far more


def test_a_failed_check_in_one_slot_restores_every_slot(pipeline_dir_for):
    from engine.errors import InsertionRefusedError
    from engine.methods.refact.model_edit import insert_model_edit

    model = _model(pipeline_dir_for, "sdxl")
    base = model.weights_hashes()
    res = compute_model_edit(model, REQ, _hp(model, max_steps=3), moments=SecondMomentStore(None), n_samples=16)
    res.edits[1].result.tensors["v_star"] += 10.0  # slot 2's W k_e can no longer equal this v*
    with pytest.raises(InsertionRefusedError, match="^text_encoder_2: after the update W k_e misses v"):
        insert_model_edit(model, res)
    assert model.weights_hashes() == base  # slot 1 was inserted first and is restored too


def test_second_moments_in_memory_stay_under_the_bound(pipeline_dir_for, tmp_path):
    slot = _model(pipeline_dir_for, "sdxl").slot("text_encoder")
    one = slot.adapter.key_size ** 2 * 8
    store = SecondMomentStore(tmp_path, max_memory_bytes=int(1.5 * one))
    first = store.get(slot, 0, n_samples=8)
    store.get(slot, 1, n_samples=8)
    assert store.memory_bytes() == one  # layer 0 was dropped from memory ...
    torch.testing.assert_close(store.get(slot, 0, n_samples=8), first, rtol=0, atol=0)  # ... and read back from disk


# ----------------------------------------------------------------------------- default layers


class _Shape:
    """Just what default_layer_for reads: a layer count and the readout's editable bound."""

    def __init__(self, num_layers: int, readout: Readout):
        self.num_layers, self.last_editable = num_layers, readout.last_editable(num_layers)


@pytest.mark.parametrize("family, slot, layers, readout, expected", [
    ("sd1", "text_encoder", 12, "final", 7),                     # the paper's layer
    ("sdxl", "text_encoder", 12, "penultimate", 9),              # centre of EMCID's CLIP-L 8-10
    ("sdxl", "text_encoder_2", 32, "penultimate+embeds", 28),    # centre of EMCID's bigG 26-30
    ("sd3", "text_encoder_2", 32, "penultimate+embeds", 28),
    ("sd3", "text_encoder_3", 24, "mean", 14),                   # T5-XXL: the paper's depth
    ("flux", "text_encoder", 12, "pooler", 7),
])
def test_default_layer_per_family_at_full_size(family, slot, layers, readout, expected):
    from engine.slots import default_depth, default_layer_for

    assert default_layer_for(_Shape(layers, Readout(readout)), default_depth(family, slot)) == expected


def test_loaded_slots_carry_their_family_depth(pipeline_dir_for):
    from engine.slots import FAMILY_DEPTHS

    model = _model(pipeline_dir_for, "sdxl")
    for s in model.slots:
        assert s.default_depth == FAMILY_DEPTHS[("sdxl", s.name)]
        assert s.default_layer() in s.editable_layers


def test_base_weight_swap_leaves_unedited_layers_untouched(pipeline_dir_for):
    """Swapping to base weights copies only the edited layers: the others keep their tensor version
    (so upstream hashes memoised on them stay valid) and everything comes back bit for bit."""
    from engine.base_weights import base_fc2_of, fc2_weights

    model = _model(pipeline_dir_for, "sdxl")
    slot = model.slot("text_encoder_2")
    weights = [slot.adapter.fc2(i).weight for i in range(slot.num_layers)]
    with torch.no_grad():
        weights[1].add_(0.5)
    edited = weights[1].detach().clone()
    versions = [w._version for w in weights]
    with fc2_weights(slot, base_fc2_of(slot)):
        assert torch.equal(weights[1], slot.base_fc2[next(k for k in slot.base_fc2 if ".1." in k)])
    assert torch.equal(weights[1], edited)
    assert [w._version for w in weights][:1] + [w._version for w in weights][2:] == versions[:1] + versions[2:]
    model.restore_base()
