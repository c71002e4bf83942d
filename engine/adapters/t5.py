"""T5 encoders (``T5EncoderModel``, transformers 5), as SD3 and FLUX use them.

Block i: h' = h + SelfAttention(rms(h)) with the relative position bias that block 0 computes and
every block reuses; key = act(wi_0(rms(h'))) * wi_1(rms(h')) (gated; ``act(wi(.))`` when not gated);
out = h' + wo(key). The editable matrix is ``encoder.block.{i}.layer.1.DenseReluDense.wo``.

In a pipeline, T5 reads prompts padded to a fixed length (256 for SD3, 512 for FLUX) with no
attention mask, so the features depend on the padding; ``pad_to`` / ``use_mask`` reproduce that
format. ``attention_mask`` in the batch always marks the prompt's own tokens (for the mean readout
and the second moment), whether or not the model sees it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.masking_utils import create_bidirectional_mask

from engine.adapters.base import EncoderAdapter
from engine.errors import TokenizationError


def _clamp_fp16(hidden: torch.Tensor) -> torch.Tensor:
    """T5Block's fp16 overflow clamp, applied where the model applies it."""
    if hidden.dtype != torch.float16:
        return hidden
    big = torch.finfo(hidden.dtype).max
    clamp = torch.where(torch.isinf(hidden).any(), big - 1000, big)
    return torch.clamp(hidden, min=-clamp, max=clamp)


class T5Adapter(EncoderAdapter):
    """T5 encoder stack; features = mean of ``last_hidden_state`` over the prompt's tokens."""

    family = "t5"
    readouts = ("mean",)

    def __init__(self, model: torch.nn.Module, *, pad_to: int | None = None, use_mask: bool = True) -> None:
        super().__init__(model)
        self.pad_to = pad_to
        self.use_mask = use_mask
        from engine.readout import Readout

        self.readout = Readout("mean")

    @property
    def stack(self) -> torch.nn.Module:
        return self.model.encoder

    def layers(self) -> Sequence[torch.nn.Module]:
        return self.stack.block

    def ff(self, layer: int) -> torch.nn.Module:
        return self.layers()[layer].layer[-1]

    def fc2(self, layer: int) -> torch.nn.Linear:
        return self.ff(layer).DenseReluDense.wo

    def mlp(self, layer: int) -> torch.nn.Module:
        return self.ff(layer).DenseReluDense

    def upstream_modules(self, layer: int) -> list[tuple[str, torch.nn.Module]]:
        mods: list[tuple[str, torch.nn.Module]] = [("shared", self.stack.embed_tokens)]
        mods += [(f"block.{i}", self.layers()[i]) for i in range(layer)]
        block = self.layers()[layer]
        dense = self.mlp(layer)
        mods += [(f"block.{layer}.layer.0", block.layer[0]), (f"block.{layer}.layer.1.layer_norm", self.ff(layer).layer_norm)]
        mods += [(f"block.{layer}.ff.{n}", getattr(dense, n)) for n in ("wi", "wi_0", "wi_1") if hasattr(dense, n)]
        return mods

    @property
    def max_length(self) -> int:
        if self.pad_to is not None:
            return int(self.pad_to)
        return 512

    @property
    def fixed_length(self) -> int | None:
        return self.pad_to

    @property
    def tokenization_mode(self) -> str:
        pad = f"pad{self.pad_to}" if self.pad_to else "longest"
        return f"{pad}-{'masked' if self.use_mask else 'unmasked'}"

    # ----- forward pieces ----------------------------------------------------------------------
    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        ids = batch["input_ids"]
        hidden = self.stack.dropout(self.stack.embed_tokens(ids))
        mask = create_bidirectional_mask(
            config=self.stack.config,
            inputs_embeds=hidden,
            attention_mask=batch.get("attention_mask") if self.use_mask else None,
        )
        attention = self.layers()[0].layer[0].SelfAttention
        seq = ids.shape[1]
        bias = attention.compute_bias(seq, seq, device=hidden.device).to(hidden.dtype)
        return hidden, (mask, bias)

    def _attend(self, layer: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        attn_mask, bias = mask
        out, _, _ = self.layers()[layer].layer[0](hidden, attention_mask=attn_mask, position_bias=bias)
        return _clamp_fp16(out)

    def run_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        attn_mask, bias = mask
        return self.layers()[layer](hidden, attn_mask, bias)[0]

    def split_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        residual = self._attend(layer, hidden, mask)
        ff = self.ff(layer)
        dense = ff.DenseReluDense
        x = ff.layer_norm(residual)
        if hasattr(dense, "wi_0"):
            key = dense.act(dense.wi_0(x)) * dense.wi_1(x)
        else:
            key = dense.act(dense.wi(x))
        key = dense.dropout(key)
        wo = dense.wo.weight
        if key.dtype != wo.dtype and wo.dtype != torch.int8:  # as T5: wo may be kept in fp32
            key = key.to(wo.dtype)
        return residual, key

    def finish_layer(self, layer: int, residual: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        return _clamp_fp16(residual + self.ff(layer).dropout(mlp_out))

    def head(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        last = self.stack.dropout(self.stack.final_layer_norm(hidden))
        mask = batch["attention_mask"].to(last.dtype).unsqueeze(-1)
        return (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    # ----- tokens ------------------------------------------------------------------------------
    def tokenize(self, tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pad to ``pad_to`` (the pipeline's format) or the longest; TokenizationError instead of truncating."""
        texts = list(texts)
        if self.pad_to is None:
            return super().tokenize(tokenizer, texts)
        enc = tokenizer(texts, padding=False, truncation=False)
        lengths = [len(ids) for ids in enc["input_ids"]]
        longest = max(range(len(texts)), key=lambda i: lengths[i])
        if lengths[longest] > self.pad_to:
            raise TokenizationError(
                f"text {texts[longest][:60]!r} is {lengths[longest]} tokens, more than the T5 encoder's "
                f"{self.pad_to}; shorten it"
            )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(texts), self.pad_to), pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.pad_to), dtype=torch.long)
        for r, row in enumerate(enc["input_ids"]):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
