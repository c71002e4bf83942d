"""Adapters: pooled features equal the model's own, the truncated forward equals the full one."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from engine.adapters import BertAdapter, ClipAdapter, adapter_for, read_pooling_config
from engine.errors import ModelFormatError, TokenizationError
from engine.methods.refact.values import shifted_output
from engine.tokens import locate_all

PROMPTS = ["the prince of wales", "a bowl of fruit in the park", "a red dog"]
SUBJECTS = ["wales", "bowl", "dog"]


def located(model, prompts=PROMPTS, subjects=SUBJECTS):
    return [
        locate_all(model.tokenizer, ["{}"], p, s, model.adapter.max_length)[0] for p, s in zip(prompts, subjects)
    ]


def model_features(model, batch):
    """Features computed by the model's own forward (the reference for the adapter)."""
    enc = model.text_encoder
    with torch.no_grad():
        out = enc(**batch)
    if isinstance(model.adapter, BertAdapter):
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(mean, dim=-1)
    return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


@pytest.mark.parametrize("name", ["tiny_clip", "tiny_clip_proj", "tiny_bert"])
def test_pooled_equals_model_output(request, name):
    model = request.getfixturevalue(name)
    batch = model.adapter.tokenize(model.tokenizer, PROMPTS)
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 3  # padding present
    with torch.no_grad():
        mine = model.adapter.pooled(batch)
    torch.testing.assert_close(mine, model_features(model, batch), rtol=0, atol=1e-6)


def full_forward_with_hook(model, batch, layer, located_prompts, delta):
    """Reference: the model's own forward with delta added to layer l's MLP output by a hook."""
    rows = torch.arange(len(located_prompts))
    idx = torch.tensor([p.index for p in located_prompts])

    def hook(_module, _inputs, output):
        output = output.clone()
        output[rows, idx] += delta
        return output

    handle = model.adapter.mlp(layer).register_forward_hook(hook)
    try:
        return model_features(model, batch)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "name, layer",
    [("tiny_clip", 0), ("tiny_clip", 1), ("tiny_clip", 2), ("tiny_clip_proj", 1), ("tiny_clip_proj", 3), ("tiny_bert", 1)],
)
def test_truncated_forward_equals_full(request, name, layer):
    model = request.getfixturevalue(name)
    adapter = model.adapter
    lp = located(model, PROMPTS + ["wales"], SUBJECTS + ["wales"])  # includes a 1-token row: idx..eos = 2
    batch = adapter.tokenize(model.tokenizer, [p.text for p in lp])
    index = torch.tensor([p.index for p in lp])
    delta = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = adapter.prefix(batch, layer)
        plain = adapter.suffix(state, state.mlp_out)
        torch.testing.assert_close(plain, model_features(model, batch), rtol=0, atol=1e-5)
        shifted = adapter.suffix(state, shifted_output(state, lp, delta))
        reference = full_forward_with_hook(model, batch, layer, lp, delta)
        step = adapter.stepper(state, index)  # the per-step path the optimiser uses
        torch.testing.assert_close(step(torch.zeros_like(delta)), plain, rtol=0, atol=1e-5)
        torch.testing.assert_close(step(delta), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(shifted, reference, rtol=0, atol=1e-5)
    if layer < adapter.num_layers - 1:  # at the last layer the lookup token cannot reach EOS
        assert (shifted - plain).abs().max() > 1e-3  # delta really changed the features


def test_stepper_gradient_matches_full_forward(tiny_clip_proj):
    adapter, lp = tiny_clip_proj.adapter, located(tiny_clip_proj)
    batch = adapter.tokenize(tiny_clip_proj.tokenizer, [p.text for p in lp])
    with torch.no_grad():
        state = adapter.prefix(batch, 1)
    step = adapter.stepper(state, torch.tensor([p.index for p in lp]))
    weights = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (step, lambda d: adapter.suffix(state, shifted_output(state, lp, d))):
        delta = torch.full((adapter.hidden_size,), 0.1, requires_grad=True)
        (fn(delta) * weights).sum().backward()
        grads.append(delta.grad)
    assert grads[0].abs().max() > 1e-4
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_prefix_key_and_value_are_fc2_input_and_output(tiny_clip):
    adapter = tiny_clip.adapter
    seen = {}
    handle = adapter.fc2(1).register_forward_hook(lambda m, i, o: seen.update(k=i[0], v=o))
    batch = adapter.tokenize(tiny_clip.tokenizer, PROMPTS)
    with torch.no_grad():
        tiny_clip.text_encoder(**batch)
        state = adapter.prefix(batch, 1)
    handle.remove()
    torch.testing.assert_close(state.key, seen["k"], rtol=0, atol=0)
    torch.testing.assert_close(state.mlp_out, seen["v"], rtol=0, atol=0)


def test_structure_names(tiny_clip, tiny_clip_proj, tiny_bert):
    assert isinstance(tiny_clip.adapter, ClipAdapter) and tiny_clip.adapter.num_layers == 3
    assert tiny_clip.adapter.fc2_name(2) == "encoder.layers.2.mlp.fc2"
    assert tiny_clip_proj.adapter.fc2_name(1) == "text_model.encoder.layers.1.mlp.fc2"
    assert tiny_bert.adapter.fc2_name(0) == "encoder.layer.0.output.dense"
    assert tiny_clip.adapter.fc2(0).weight.shape == (32, 64)
    assert (tiny_clip.adapter.max_length, tiny_bert.adapter.max_length) == (77, 64)
    assert not tiny_clip.adapter.normalized_features and tiny_bert.adapter.normalized_features


def test_upstream_hash_tracks_only_weights_feeding_the_key(tiny_clip):
    adapter = tiny_clip.adapter
    h1 = adapter.upstream_hash(1)
    with torch.no_grad():
        adapter.fc2(1).weight.add_(1.0)  # layer 1's own fc2 does not feed its input
    assert adapter.upstream_hash(1) == h1
    with torch.no_grad():
        adapter.fc2(0).weight[0, 0] += 0.5  # layer 0's output does
    h2 = adapter.upstream_hash(1)
    assert h2 != h1
    adapter.layers()[1].mlp.fc1.bias.data[0] += 0.25  # .data bypasses the version counter
    assert adapter.upstream_hash(1) != h2


def test_tokenize_refuses_too_long(tiny_clip):
    with pytest.raises(TokenizationError, match="more than the encoder's 77"):
        tiny_clip.adapter.tokenize(tiny_clip.tokenizer, ["ok", "word " * 80])


def test_adapter_for_rejects_other_models():
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=32, patch_size=16))
    with pytest.raises(ModelFormatError, match="no ReFACT adapter"):
        adapter_for(vision)


def test_bert_pooling_config(tmp_path, tiny_bert):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert read_pooling_config(tmp_path) == ("cls", False)
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Normalize"}]))
    assert read_pooling_config(tmp_path) == ("cls", True)
    cls_adapter = BertAdapter(tiny_bert.text_encoder, pooling="cls", normalize=False)
    batch = cls_adapter.tokenize(tiny_bert.tokenizer, PROMPTS)
    with torch.no_grad():
        out = tiny_bert.text_encoder(**batch).last_hidden_state[:, 0]
        torch.testing.assert_close(cls_adapter.pooled(batch), out, rtol=0, atol=1e-6)
