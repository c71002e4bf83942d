"""What each pipeline family's own encode_prompt hands the denoiser, split per encoder slot."""

from __future__ import annotations

import torch


def _eos(slot, texts):
    batch = slot.adapter.tokenize(slot.tokenizer, texts)
    return slot.adapter.pool_positions(batch["input_ids"]), batch


@torch.no_grad()
def denoiser_inputs(model, texts: list[str]) -> dict[str, torch.Tensor]:
    """Per slot, the part of ``pipeline.encode_prompt``'s output that slot produces: CLIP sequence
    channels at EOS (plus its pooled share), T5's sequence averaged over the prompt's tokens."""
    pipe, fam, rows = model.pipeline, model.family, torch.arange(len(texts))
    out: dict[str, torch.Tensor] = {}
    if fam in ("sd1", "sd2"):
        (pe, _) = pipe.encode_prompt(texts, "cpu", 1, False)
        s = model.slots[0]
        out[s.name] = pe[rows, _eos(s, texts)[0]]
    elif fam == "sdxl":
        pe, _, pooled, _ = pipe.encode_prompt(texts, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
        s1, s2 = model.slots
        d1 = s1.adapter.hidden_size
        out[s1.name] = pe[rows, _eos(s1, texts)[0], :d1]
        out[s2.name] = torch.cat([pe[rows, _eos(s2, texts)[0], d1:], pooled], dim=-1)
    elif fam == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt(texts, texts, texts, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
        s1, s2, s3 = model.slots
        d1, d2 = s1.adapter.hidden_size, s2.adapter.hidden_size
        out[s1.name] = torch.cat([pe[rows, _eos(s1, texts)[0], :d1], pooled[:, :s1.adapter.model.config.projection_dim]], -1)
        out[s2.name] = torch.cat([pe[rows, _eos(s2, texts)[0], d1:d1 + d2], pooled[:, s1.adapter.model.config.projection_dim:]], -1)
        mask = s3.adapter.tokenize(s3.tokenizer, texts)["attention_mask"].float()[..., None]
        t5 = pe[:, 77:, : s3.adapter.hidden_size]
        out[s3.name] = (t5 * mask).sum(1) / mask.sum(1)
    elif fam == "flux":
        pe, pooled, _ = pipe.encode_prompt(texts, texts, device="cpu", num_images_per_prompt=1)
        s1, s2 = model.slots
        out[s1.name] = pooled
        mask = s2.adapter.tokenize(s2.tokenizer, texts)["attention_mask"].float()[..., None]
        out[s2.name] = (pe * mask).sum(1) / mask.sum(1)
    return out


_LOADED: dict[str, object] = {}


def cached_model(pipeline_dir_for, arch: str):
    """The tiny ``arch`` pipeline, loaded once per test session and reset to its base weights."""
    from engine.models import load_model

    if arch not in _LOADED:
        _LOADED[arch] = load_model(pipeline_dir_for(arch), device="cpu")
    model = _LOADED[arch]
    model.restore_base()
    return model


def edit_moves(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """Rows [edit prompt, target text, unrelated prompt] read before and after one edit: the cosine of
    the edit prompt's move with the direction to the target's feature, and the unrelated prompt's move
    as a share of the edit prompt's."""
    moved, toward = after[0] - before[0], before[1] - before[0]
    cosine = float(torch.nn.functional.cosine_similarity(moved, toward, dim=0))
    return cosine, float((after[2] - before[2]).norm()) / float(moved.norm())
