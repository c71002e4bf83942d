"""SANA (Gemma-2, instruction prefix, BOS plus the prompt window) and CogView4 (GLM-4, left padding to a
multiple of 16, no mask) on tiny builds (CPU).

Per family: the slot's readout is the pipeline's own encode_prompt output pooled over the read tokens;
the adapter's truncated forward with a delta equals the pipeline's own forward with the delta hooked in;
one edit moves the edit prompt's conditioning toward the target's while an unrelated prompt moves far
less; revert restores every slot bit for bit; a merged export reloads the edited encoder exactly; the
subject index in the templated / left-padded sequence decodes to the subject.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from family_helpers import cached_model as _model  # noqa: E402
from family_helpers import edit_moves  # noqa: E402

from engine.covariance import SecondMomentStore  # noqa: E402
from engine.methods.refact.hparams import HParamsError, ReFACTHParams  # noqa: E402
from engine.methods.refact.model_edit import apply_model_edit  # noqa: E402
from engine.request import EditRequest  # noqa: E402
from engine.slots import SANA_INSTRUCTION  # noqa: E402
from engine.tokens import locate_subject  # noqa: E402

torch.set_num_threads(1)

REQ = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
TEXTS = ["the prince of wales", "a red dog", "a bowl of soup"]
LAYER = {"sana": 2, "cogview4": 1}


def _sana_instruction(pipe) -> list[str]:
    return inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default


def _raw(slot):
    return slot.tokenizer.tokenizer


@torch.no_grad()
def encode_prompt_read(model, texts: list[str]) -> torch.Tensor:
    """What the pipeline's own encode_prompt hands the denoiser, pooled over the prompt's read tokens."""
    pipe, slot = model.pipeline, model.slots[0]
    if model.family == "sana":  # __call__ passes its instruction; encode_prompt applies select_index itself
        embeds, mask, _, _ = pipe.encode_prompt(list(texts), do_classifier_free_guidance=False, device="cpu",
                                                complex_human_instruction=_sana_instruction(pipe))
        w = mask.to(embeds.dtype).unsqueeze(-1)
        return (embeds * w).sum(1) / w.sum(1)
    rows = []  # CogView4: one prompt at a time, as a generation encodes it; the pads come first
    for text in texts:
        embeds, _ = pipe.encode_prompt([text], do_classifier_free_guidance=False, device="cpu")
        n = len(_raw(slot)(text)["input_ids"])
        rows.append(embeds[0, -n:].mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["sana", "cogview4"])
def test_readout_is_what_encode_prompt_feeds_the_denoiser(pipeline_dir_for, arch):
    model = _model(pipeline_dir_for, arch)
    slot = model.slots[0]
    assert model.slot_names == ["text_encoder"]
    if arch == "sana":  # BOS read, instruction tokens 1..n-2 dropped, limit n + 300 - 2 (diffusers' arithmetic)
        n = len(_raw(slot).encode(SANA_INSTRUCTION))
        assert (slot.readout.spec(), slot.max_length, slot.adapter.use_mask) == (f"hidden:-1/drop=1:{n - 1}", n + 298, True)
    else:
        assert (slot.readout.spec(), slot.max_length, slot.adapter.use_mask) == ("hidden:-2", 1024, False)
    mine = slot.adapter.encode(slot.tokenizer, TEXTS)
    torch.testing.assert_close(mine, encode_prompt_read(model, TEXTS), rtol=0, atol=1e-5)


def test_sana_instruction_is_the_pipelines(pipeline_dir_for):
    model = _model(pipeline_dir_for, "sana")
    assert SANA_INSTRUCTION == "\n".join(_sana_instruction(model.pipeline))


@pytest.mark.parametrize("arch", ["sana", "cogview4"])
def test_truncated_forward_equals_the_pipelines_own_forward(pipeline_dir_for, arch):
    model = _model(pipeline_dir_for, arch)
    slot, layer = model.slots[0], LAYER[arch]
    adapter = slot.adapter
    located = [locate_subject(slot.tokenizer, "{}", t, None, slot.max_length) for t in TEXTS]
    batch = adapter.tokenize(slot.tokenizer, [loc.text for loc in located])
    index = torch.tensor([loc.index for loc in located])
    delta = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = adapter.prefix(batch, layer)
        shifted = adapter.stepper(state, index)(delta)
    rows = []
    for text, loc in zip(TEXTS, located):  # the pipeline's forward, delta added to the MLP output by a hook

        def hook(_module, _inputs, output, i=loc.index):
            output = output.clone()
            output[:, i] += delta
            return output

        handle = adapter.mlp(layer).register_forward_hook(hook)
        try:
            rows.append(encode_prompt_read(model, [text])[0])
        finally:
            handle.remove()
    torch.testing.assert_close(shifted, torch.stack(rows), rtol=0, atol=1e-5)
    assert (shifted - encode_prompt_read(model, TEXTS)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["sana", "cogview4"])
def test_one_edit_moves_the_conditioning_reverts_and_exports_exactly(pipeline_dir_for, tmp_path, arch):
    from diffusers import DiffusionPipeline

    from engine.hashing import module_hash
    from refact_tui.services.export import MANIFEST_FORMAT, apply_deltas_manifest, combined_weights_hash

    model = _model(pipeline_dir_for, arch)
    slot, layer = model.slots[0], LAYER[arch]
    base, base_hash = model.weights_hashes(), combined_weights_hash(model)
    before = encode_prompt_read(model, TEXTS)
    hp = ReFACTHParams(layer=layer, lr=0.5, weight_decay=0.0, max_steps=30, templates=(),
                       slot_layers=((slot.name, layer),))
    res = apply_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=64)
    assert res.edits[0].result.verify_error < 1e-4  # W k_e == v*
    after = encode_prompt_read(model, TEXTS)
    cosine, ratio = edit_moves(before, after)
    assert cosine > 0.3 and ratio < 0.5, (cosine, ratio)

    image = model.pipeline(prompt=TEXTS[0], **_two_steps(arch)).images
    assert image.shape[1] == 3 and bool(torch.isfinite(image).all())

    edited = model.weights_hashes()
    model.restore_base()
    assert model.weights_hashes() == base  # revert: every slot bit for bit

    (tmp_path / "d" / "deltas").mkdir(parents=True)
    sha = res.delta.save(tmp_path / "d" / "deltas" / "0001.safetensors")
    res.delta.apply(model)
    assert model.weights_hashes() == edited
    final = combined_weights_hash(model)
    model.restore_base()
    manifest = {
        "format": MANIFEST_FORMAT, "history": "main",
        "base": {"source": str(pipeline_dir_for(arch)), "kind": "sd-pipeline", "encoder_family": "llm",
                 "encoder_hash": base_hash},
        "final_weights_hash": final,
        "edits": [{"seq": 1, "file": "deltas/0001.safetensors", "sha256": sha, "before_hash": base_hash,
                   "weights_hash": final, "weights_hashes": edited}],
    }
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    out = apply_deltas_manifest(tmp_path / "d" / "manifest.json", pipeline_dir_for(arch), tmp_path / "out")
    assert out.weights_hashes == edited
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "out", local_files_only=True)
    assert module_hash(reloaded.text_encoder) == edited["text_encoder"] != base["text_encoder"]


def _two_steps(arch: str) -> dict:
    kw = dict(num_inference_steps=2, height=64, width=64, output_type="pt", generator=torch.Generator().manual_seed(0))
    if arch == "sana":
        kw["use_resolution_binning"] = False
    return kw


def test_cogview4_subject_index_counts_the_left_padding(pipeline_dir_for):
    slot = _model(pipeline_dir_for, "cogview4").slots[0]
    raw = _raw(slot)
    loc = locate_subject(slot.tokenizer, "a photo of {}", "the Prime Minister", "Prime Minister", slot.max_length)
    ids = slot.adapter.tokenize(slot.tokenizer, [loc.text])["input_ids"][0]
    own = raw(loc.text)["input_ids"]  # what _get_glm_embeds tokenizes, before it prepends the pad tokens
    pads = (16 - len(own) % 16) % 16
    assert pads > 0 and ids.tolist() == [raw.pad_token_id] * pads + own and len(ids) % 16 == 0
    assert raw.convert_ids_to_tokens(own[:2]) == ["[gMASK]", "<sop>"]
    assert loc.index == pads + len(own) - 1  # the subject ends the prompt
    assert raw.decode(ids[: loc.index + 1], skip_special_tokens=True).endswith("a photo of the Prime Minister")
    n = len(raw(" Prime Minister", add_special_tokens=False)["input_ids"])
    assert raw.decode(ids[loc.index - n + 1: loc.index + 1]).strip() == "Prime Minister"


def test_sana_subject_is_in_the_read_window(pipeline_dir_for):
    slot = _model(pipeline_dir_for, "sana").slots[0]
    raw = _raw(slot)
    loc = locate_subject(slot.tokenizer, "{}", "The Prince of Wales", "Prince", slot.max_length)
    assert loc.text == "the prince of wales"  # Sana lowercases the prompt, not the instruction
    batch = slot.adapter.tokenize(slot.tokenizer, [loc.text])
    ids = batch["input_ids"][0]
    assert ids.tolist() == raw(SANA_INSTRUCTION + "the prince of wales")["input_ids"]
    assert raw.decode(ids[: loc.index + 1], skip_special_tokens=True).endswith("User Prompt: the prince")
    read = slot.adapter.read_mask(batch)[0]
    n = len(raw.encode(SANA_INSTRUCTION))
    assert read[0] == 1 and read[1 : n - 1].sum() == 0 and bool(read[n - 1:].all())  # BOS + the window
    assert raw.convert_ids_to_tokens(int(ids[n - 1])) == "\u2581the"  # the window starts at the prompt
    assert read[loc.index] == 1
    from engine.errors import TokenizationError
    from engine.models import load_tokenizer, token_limit

    assert token_limit(load_tokenizer(pipeline_dir_for("sana"))) == slot.max_length == n + 298  # queue-time limit
    # BOS + the instruction's n - 2 other tokens (its trailing space joins the first word) + 300 words
    with pytest.raises(TokenizationError, match=rf"^text .* is {n + 299} tokens, more than the encoder's {n + 298}; "):
        locate_subject(slot.tokenizer, "{}", "dog " * 300, "dog", slot.max_length)
    assert locate_subject(slot.tokenizer, "{}", "dog " * 299, "dog", slot.max_length).length == n + 298


def test_layer_after_the_deepest_tap_is_refused_in_one_line(pipeline_dir_for):
    model = _model(pipeline_dir_for, "cogview4")
    slot = model.slots[0]
    last = slot.num_layers - 1  # hidden_states[-2] is block L-2's output
    hp = ReFACTHParams(layer=last, lr=0.5, weight_decay=0.0, max_steps=2, templates=(), slot_layers=((slot.name, last),))
    base = model.weights_hashes()
    with pytest.raises(HParamsError, match=rf"^layer {last} is out of range for text_encoder \(editable: layers "
                                           rf"0\.\.{last - 1} of {last + 1} \(layers after {last - 1} cannot reach "
                                           r"its hidden readout\)\); pick one with --layer text_encoder=N$"):
        apply_model_edit(model, REQ, hp, moments=SecondMomentStore(None), n_samples=8)
    assert model.weights_hashes() == base


def test_builds_name_the_real_classes_and_full_is_refused(pipeline_dir_for, tmp_path):
    from engine.builder import BuildError, build_pipeline

    for arch, cls, enc, tok in (("sana", "SanaPipeline", "Gemma2Model", "GemmaTokenizer"),
                                ("cogview4", "CogView4Pipeline", "GlmModel", "TokenizersBackend")):
        index = json.loads((pipeline_dir_for(arch) / "model_index.json").read_text())
        assert (index["_class_name"], index["text_encoder"][1], index["tokenizer"][1]) == (cls, enc, tok)
        with pytest.raises(BuildError, match=r"^--size full is not built for .*: it needs the real text encoder "
                                             r"\((Gemma-2-2B|GLM-4-9B) "):
            build_pipeline(tmp_path / arch, size="full", arch=arch)
        assert not (tmp_path / arch).exists()


def test_cogview4_second_moment_rows_are_the_prompts_own_tokens(pipeline_dir_for):
    from engine.covariance import collect_second_moment

    slot = _model(pipeline_dir_for, "cogview4").slots[0]
    lines = ["a red dog", "the prince of wales in a park", "a bowl of soup"]
    c, n = collect_second_moment(slot.adapter, slot.tokenizer, lines, 1)
    assert n == sum(len(_raw(slot)(line)["input_ids"]) for line in lines)  # the left pads are no rows of C
    located = [locate_subject(slot.tokenizer, "{}", t, None, slot.max_length) for t in lines]
    with torch.no_grad():
        state = slot.adapter.prefix(slot.adapter.tokenize(slot.tokenizer, [loc.text for loc in located]), 1)
    keys = state.key[state.batch["attention_mask"].bool()].double()
    torch.testing.assert_close(c.double(), keys.T @ keys / n, rtol=1e-6, atol=1e-8)  # keys in the pipeline's format
