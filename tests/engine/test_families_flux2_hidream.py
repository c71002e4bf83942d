"""FLUX.2 [dev] (Mistral3 text part) and HiDream-I1 (CLIP-L, CLIP-bigG, T5, Llama-3.1) on tiny builds (CPU).

Per family: every slot's readout is what the pipeline's own ``encode_prompt`` hands the denoiser (pooled
over the read tokens); one edit of every slot moves the edit prompt's conditioning toward the target's in
every part while an unrelated prompt moves far less; revert restores every slot bit for bit; a merged export
reloads with diffusers and reproduces each encoder exactly; the split forward equals the model's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from family_helpers import cached_model as _model  # noqa: E402
from family_helpers import edit_moves  # noqa: E402

from engine.covariance import SecondMomentStore  # noqa: E402
from engine.errors import TokenizationError  # noqa: E402
from engine.hashing import module_hash  # noqa: E402
from engine.methods.refact.hparams import HParamsError, ReFACTHParams  # noqa: E402
from engine.methods.refact.model_edit import apply_model_edit  # noqa: E402
from engine.readout import Readout  # noqa: E402
from engine.request import EditRequest  # noqa: E402
from engine.slots import FLUX2_SYSTEM_MESSAGE  # noqa: E402
from engine.tokens import TemplatedTokenizer, locate_subject  # noqa: E402

torch.set_num_threads(1)

REQ = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
TEXTS = ["the prince of wales", "a red dog", "a bowl of soup"]
# slot -> (readout spec, token limit, layer edited in the one-edit test). FLUX.2's tiny Mistral has 32
# random blocks (it reads hidden_states 10, 20, 30); layer 4 feeds every tap.
FAMILIES = {
    "flux2": {"text_encoder": ("hidden:10,20,30", 512, 4)},
    "hidream": {
        "text_encoder": ("final", 128, 1),
        "text_encoder_2": ("final", 128, 2),
        "text_encoder_3": ("mean", 128, 1),
        "text_encoder_4": ("hidden:1..-1", 128, 1),
    },
}


def _masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(seq.dtype).unsqueeze(-1)
    return (seq[:, : w.shape[1]] * w).sum(1) / w.sum(1)


@torch.no_grad()
def denoiser_reads(model, texts: list[str]) -> dict[str, torch.Tensor]:
    """Per slot, the part of the pipeline's own ``encode_prompt`` output it produces, pooled over the prompt's
    tokens (the masks are the slot's own tokenization, whose rows are the pipeline's up to padding)."""
    pipe, texts = model.pipeline, list(texts)
    masks = {s.name: s.adapter.tokenize(s.tokenizer, texts)["attention_mask"] for s in model.slots}
    if model.family == "flux2":
        embeds, _ = pipe.encode_prompt(texts, device="cpu")
        return {"text_encoder": _masked_mean(embeds, masks["text_encoder"])}
    t5, _, llama, _, pooled, _ = pipe.encode_prompt(texts, texts, texts, texts, device="cpu",
                                                    do_classifier_free_guidance=False)
    width_l = model.slot("text_encoder").text_encoder.config.projection_dim
    return {
        "text_encoder": pooled[:, :width_l],
        "text_encoder_2": pooled[:, width_l:],
        "text_encoder_3": _masked_mean(t5, masks["text_encoder_3"]),
        # hidden_states[1:] stacked on dim 0: each layer pooled, then joined on channels
        "text_encoder_4": torch.cat([_masked_mean(h, masks["text_encoder_4"]) for h in llama], dim=-1),
    }


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_readout_is_what_encode_prompt_feeds_the_denoiser(pipeline_dir_for, arch):
    model = _model(pipeline_dir_for, arch)
    assert model.slot_names == list(FAMILIES[arch])
    want = denoiser_reads(model, TEXTS)
    for slot in model.slots:
        spec, limit, _ = FAMILIES[arch][slot.name]
        assert (slot.readout.spec(), slot.max_length) == (spec, limit), slot.name
        got = slot.adapter.encode(slot.tokenizer, TEXTS)
        torch.testing.assert_close(got, want[slot.name], rtol=0, atol=1e-5, msg=slot.name)


def _manifest_export(model, folder: Path, res, base_hash: str, tmp: Path) -> Path:
    from refact_tui.services.export import MANIFEST_FORMAT, apply_deltas_manifest, combined_weights_hash

    (tmp / "d" / "deltas").mkdir(parents=True)
    sha = res.delta.save(tmp / "d" / "deltas" / "0001.safetensors")
    edited = model.weights_hashes()
    manifest = {
        "format": MANIFEST_FORMAT, "history": "main",
        "base": {"source": str(folder), "kind": "sd-pipeline", "encoder_family": model.encoder_family,
                 "encoder_hash": base_hash},
        "final_weights_hash": combined_weights_hash(model),
        "edits": [{"seq": 1, "file": "deltas/0001.safetensors", "sha256": sha, "before_hash": base_hash,
                   "weights_hash": combined_weights_hash(model), "weights_hashes": edited}],
    }
    (tmp / "d" / "manifest.json").write_text(json.dumps(manifest))
    out = apply_deltas_manifest(tmp / "d" / "manifest.json", folder, tmp / "out")
    assert out.weights_hashes == edited
    return tmp / "out"


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_one_edit_moves_every_part_reverts_exactly_and_exports(pipeline_dir_for, tmp_path, arch):
    from diffusers import DiffusionPipeline

    from refact_tui.services.export import combined_weights_hash

    folder = pipeline_dir_for(arch)
    model = _model(pipeline_dir_for, arch)
    base, base_hash = model.weights_hashes(), combined_weights_hash(model)
    layers = tuple((name, layer) for name, (_, _, layer) in FAMILIES[arch].items())
    before = denoiser_reads(model, TEXTS)
    hp = ReFACTHParams(layer=layers[0][1], lr=0.5, weight_decay=0.0, max_steps=30, templates=(), slot_layers=layers)
    res = apply_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=64)
    assert [e.slot for e in res.edits] == list(FAMILIES[arch])
    assert all(e.result.verify_error < 1e-4 for e in res.edits)  # W k_e == v* in every slot
    after = denoiser_reads(model, TEXTS)
    for name in FAMILIES[arch]:
        cosine, ratio = edit_moves(before[name], after[name])
        assert cosine > 0.3, (name, cosine)
        assert ratio < 0.5, (name, ratio)

    out = _manifest_export(model, folder, res, base_hash, tmp_path)
    reloaded = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    for slot in model.slots:  # every encoder exactly the edited one
        assert module_hash(getattr(reloaded, slot.name)) == slot.encoder_hash() != base[slot.name], slot.name
    assert module_hash(reloaded.transformer) == module_hash(model.pipeline.transformer)

    model.restore_base()
    assert model.weights_hashes() == base


def _hook_forward(model, adapter, batch, layer=None, index=None, delta=None):
    """The encoder's own hidden_states, optionally with delta added to one layer's MLP output at ``index``."""
    handle = None
    if layer is not None:
        rows = torch.arange(batch["input_ids"].shape[0])

        def hook(_module, _inputs, output):
            output = output.clone()
            output[rows, index] += delta
            return output

        handle = adapter.mlp(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(**batch, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        if handle is not None:
            handle.remove()


def _reference(hs, readout: Readout, num_layers: int, mask: torch.Tensor) -> torch.Tensor:
    indices = range(1, num_layers + 1) if readout.span else readout.layers
    return torch.cat([_masked_mean(hs[k], mask) for k in indices], dim=-1)


@pytest.mark.parametrize("arch, slot_name, layer", [("flux2", "text_encoder", 12), ("hidream", "text_encoder_4", 1)])
def test_truncated_forward_equals_the_full_forward(pipeline_dir_for, arch, slot_name, layer):
    model = _model(pipeline_dir_for, arch)
    slot = model.slot(slot_name)
    adapter, encoder = slot.adapter, slot.text_encoder
    batch = adapter.tokenize(slot.tokenizer, TEXTS)
    mask = batch["attention_mask"]
    index = mask.sum(1) - 3  # a token inside each prompt's own span (template included)
    delta = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(3))
    n = adapter.num_layers
    with torch.no_grad():
        state = adapter.prefix(batch, layer)
        plain = adapter.suffix(state, state.mlp_out)
        torch.testing.assert_close(plain, _reference(_hook_forward(encoder, adapter, batch), adapter.readout, n, mask),
                                   rtol=0, atol=1e-5)
        step = adapter.stepper(state, index)
        shifted = _reference(_hook_forward(encoder, adapter, batch, layer, index, delta), adapter.readout, n, mask)
        torch.testing.assert_close(step(delta), shifted, rtol=0, atol=1e-5)
    assert (step(delta) - plain).abs().max() > 1e-3


def test_flux2_adapter_reads_the_language_model_and_never_runs_the_vision_tower(pipeline_dir_for):
    slot = _model(pipeline_dir_for, "flux2").slot("text_encoder")
    encoder = slot.text_encoder
    assert type(encoder).__name__ == "Mistral3ForConditionalGeneration"
    assert slot.adapter.stack is encoder.model.language_model
    assert slot.adapter.fc2_name(29) == "model.language_model.layers.29.mlp.down_proj"
    assert list(slot.fc2_modules())[0] == "model.language_model.layers.0.mlp.down_proj"

    def refuse(*_args):
        raise AssertionError("the vision tower ran")

    handle = encoder.model.vision_tower.register_forward_pre_hook(refuse)
    try:
        slot.adapter.encode(slot.tokenizer, TEXTS)
    finally:
        handle.remove()


def test_flux2_subject_is_found_inside_the_pipelines_chat_turns(pipeline_dir_for):
    model = _model(pipeline_dir_for, "flux2")
    pipe, slot = model.pipeline, model.slots[0]
    assert pipe.system_message == FLUX2_SYSTEM_MESSAGE
    assert isinstance(slot.tokenizer, TemplatedTokenizer)
    loc = locate_subject(slot.tokenizer, "a photo of {}", "the Prime Minister", "Prime Minister", slot.max_length)
    ids = slot.adapter.tokenize(slot.tokenizer, [loc.text])["input_ids"][0]
    messages = [[{"role": "system", "content": [{"type": "text", "text": pipe.system_message}]},
                 {"role": "user", "content": [{"type": "text", "text": loc.text}]}]]
    theirs = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True, return_dict=True,
                                                return_tensors="pt")["input_ids"][0]
    assert ids.tolist() == theirs.tolist()  # exactly the sequence encode_prompt feeds (one BOS)
    raw = slot.tokenizer.tokenizer
    assert (ids == raw.bos_token_id).sum() == 1
    assert raw.decode(ids[: loc.index + 1]).endswith("a photo of the Prime Minister")
    assert raw.decode(ids[loc.index + 1:]) == "[/INST]"


def test_layers_after_the_deepest_tap_are_refused_in_one_line(pipeline_dir_for):
    model = _model(pipeline_dir_for, "flux2")
    slot = model.slots[0]
    assert slot.editable_layers == range(0, 30)  # hidden_states[30] is block 29's output
    hp = ReFACTHParams(layer=30, lr=0.5, weight_decay=0.0, max_steps=2, templates=(), slot_layers=((slot.name, 30),))
    with pytest.raises(HParamsError, match=r"^layer 30 is out of range for text_encoder \(editable: layers 0\.\.29 of "
                                           r"32 \(layers after 29 cannot reach its hidden readout\)\); pick one with "
                                           r"--layer text_encoder=N$"):
        apply_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=8)
    hidream = _model(pipeline_dir_for, "hidream")
    assert hidream.slot("text_encoder_4").editable_layers == range(0, 4)  # the span reads the last block too
    last = hidream.slot("text_encoder").num_layers - 1  # CLIP text_embeds are read at EOS
    with pytest.raises(HParamsError, match=rf"^layer {last} is out of range for text_encoder \(editable: layers "):
        hidream.slot("text_encoder").check_layer(last)


def test_hidream_span_readout_round_trips_and_fits_any_depth():
    readout = Readout.parse("hidden:1..-1")
    assert readout.span and readout.spec() == "hidden:1..-1"
    assert readout.taps(32) == tuple(range(32)) and readout.last_editable(32) == 31
    assert Readout.parse("hidden:2..-2").taps(6) == (1, 2, 3, 4)


def test_full_builds_are_refused_with_what_they_need(tmp_path):
    from engine.builder import BuildError, build_pipeline

    for arch, need in (("flux2", "Mistral-Small-3.1-24B"), ("hidream", "Llama-3.1-8B")):
        with pytest.raises(BuildError, match=rf"^--size full is not built for {arch}: it needs the real text encoders? \(.*{need}"):
            build_pipeline(tmp_path / arch, size="full", arch=arch)
        assert not (tmp_path / arch).exists()


def test_tiny_folders_load_offline_with_their_real_classes(pipeline_dir_for):
    from diffusers import DiffusionPipeline

    expect = {
        "flux2": ("Flux2Pipeline", {"text_encoder": "Mistral3ForConditionalGeneration", "tokenizer": "PixtralProcessor"}),
        "hidream": ("HiDreamImagePipeline", {"text_encoder": "CLIPTextModelWithProjection",
                                             "text_encoder_2": "CLIPTextModelWithProjection",
                                             "text_encoder_3": "T5EncoderModel", "text_encoder_4": "LlamaForCausalLM"}),
    }
    for arch, (class_name, parts) in expect.items():
        folder = pipeline_dir_for(arch)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == class_name
        assert all(index[k][1] == v for k, v in parts.items())
        assert not list(folder.rglob("*.bin"))
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        assert type(pipe).__name__ == class_name


def test_two_step_generation_runs(pipeline_dir_for):
    for arch in sorted(FAMILIES):
        pipe = _model(pipeline_dir_for, arch).pipeline
        size = pipe.default_sample_size
        pipe.default_sample_size = 32  # HiDream renders at default_sample_size's area whatever height/width say
        try:
            image = pipe(prompt=TEXTS[0], num_inference_steps=2, height=64, width=64, output_type="pt",
                         generator=torch.Generator().manual_seed(0)).images
        finally:
            pipe.default_sample_size = size
        assert image.shape[-2:] == (64, 64) and bool(torch.isfinite(image).all()), arch


def test_slots_choose_a_subset_and_the_rest_stay_bit_for_bit(pipeline_dir_for):
    model = _model(pipeline_dir_for, "hidream")
    base = model.weights_hashes()
    hp = ReFACTHParams(layer=1, lr=0.5, weight_decay=0.0, max_steps=5, templates=(), slots=("text_encoder_4",),
                       slot_layers=(("text_encoder_4", 1),))
    res = apply_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=16)
    assert [e.slot for e in res.edits] == ["text_encoder_4"] and res.delta.components == ["text_encoder_4"]
    after = model.weights_hashes()
    assert after["text_encoder_4"] != base["text_encoder_4"]
    assert {k: v for k, v in after.items() if k != "text_encoder_4"} == {k: v for k, v in base.items()
                                                                          if k != "text_encoder_4"}
    model.restore_base()
    assert model.weights_hashes() == base


def test_queue_time_tokenizers_apply_the_template_and_the_limit(pipeline_dir_for):
    from engine.models import load_tokenizer, token_limit

    folder = pipeline_dir_for("flux2")
    tok = load_tokenizer(folder)
    slot = _model(pipeline_dir_for, "flux2").slots[0]
    assert isinstance(tok, TemplatedTokenizer) and token_limit(tok) == 512
    loc = locate_subject(tok, "{}", "the prince of wales", "prince", token_limit(tok))
    assert loc == locate_subject(slot.tokenizer, "{}", "the prince of wales", "prince", slot.max_length)
    assert loc.length > 90  # the system turn counts against the limit
    llama = load_tokenizer(pipeline_dir_for("hidream"), "text_encoder_4")
    ids = llama("the prince of wales")["input_ids"]
    assert ids[0] == llama.bos_token_id and llama.pad_token == llama.eos_token and token_limit(llama) == 128
    t5 = load_tokenizer(pipeline_dir_for("hidream"), "text_encoder_3")  # the tokenizer allows 512, the pipeline 128
    assert t5.tokenizer.model_max_length == 512 and token_limit(t5) == 128
    with pytest.raises(TokenizationError, match=r"more than the encoder's 128; shorten it$"):
        locate_subject(t5, "{}", "the prince of wales " * 40, "prince", token_limit(t5))
