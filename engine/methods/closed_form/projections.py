"""Where a UNet reads the text: its cross-attention projections, and the token embeddings they read.

Shared by the closed-form methods (TIME, UCE) and the cross-attention proxy of the evaluation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from engine.tokens import check_length


def cross_attention_projections(unet: torch.nn.Module, text_width: int, with_to_k: bool,
                                with_to_v: bool = True) -> dict[str, torch.nn.Linear]:
    """Module name -> Linear of every cross-attention (attn2) to_v (and to_k) whose input is the text width."""
    wanted = tuple(s for s, on in (("attn2.to_k", with_to_k), ("attn2.to_v", with_to_v)) if on)
    out: dict[str, torch.nn.Linear] = {}
    for name, mod in unet.named_modules():
        if name.endswith(wanted) and isinstance(mod, torch.nn.Linear) and mod.in_features == text_width:
            out[name] = mod
    return out


def text_width(model: Any) -> int:
    return int(model.text_encoder.config.hidden_size)


@torch.no_grad()
def token_embeddings(model: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Final text-encoder token embeddings [N, L, d] (float64, cpu) the UNet is conditioned on, padded to
    the encoder's length as the pipeline pads them, plus the attention mask [N, L] and the token ids."""
    tok = model.tokenizer
    max_len = int(model.adapter.max_length)
    for t in texts:
        check_length(tok, t, max_len)
    batch = tok(list(texts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    ids = batch["input_ids"].to(model.device)
    out = model.text_encoder(ids)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden.detach().to("cpu", torch.float64), batch["attention_mask"].cpu(), batch["input_ids"].tolist()
