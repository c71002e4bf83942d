"""Decoder language models as text encoders: Llama, Mistral, Qwen2/2.5-VL (text), Qwen3, Gemma-2, GLM.

Layer i: h' = h + post_attn(attn(input_ln(h))); key = the input of ``mlp.down_proj`` (gate/up product,
or GLM's fused ``gate_up_proj`` halves) computed by the MLP itself; out = h' + post_mlp(down_proj(key)).
``post_attn`` / ``post_mlp`` are Gemma-2's (and GLM-4's) extra norms, identity elsewhere. The editable
matrix is ``layers.{i}.mlp.down_proj``.

Nothing of the model is re-implemented: the model's own forward computes the embeddings (Gemma's
scaling included), position ids, RoPE tables and the per-layer attention masks (causal, padding,
sliding window); the adapter records them by running that forward once over placeholder layers.
Attention (GQA, soft-capping, sliding windows) is the layer's own ``self_attn`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from engine.adapters.base import EncoderAdapter
from engine.errors import ModelFormatError

LLM_MODEL_TYPES = (
    "llama", "mistral", "mistral3", "qwen2", "qwen2_5_vl", "qwen2_5_vl_text", "qwen3", "gemma2", "glm", "glm4",
    "ministral", "ministral3",
)


class _Stop(Exception):
    """Raised by a hook to end a forward early (the rest of the pass is not needed)."""


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``index``: records the arguments the model passes, changes nothing."""

    def __init__(self, real: torch.nn.Module, store: list[dict[str, Any]]) -> None:
        super().__init__()
        self.store = store
        self.attention_type = getattr(real, "attention_type", None)  # some models read it from the layer

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            raise ModelFormatError("this decoder passes positional layer arguments; the LLM adapter needs keywords")
        self.store.append({"hidden": hidden_states, **kwargs})
        return hidden_states


@dataclass(frozen=True)
class _Norms:
    """Names of a decoder layer's norms around attention and MLP (None: not applied)."""

    attn_in: str
    attn_out: str | None
    mlp_in: str
    mlp_out: str | None


def _norms_of(layer: torch.nn.Module) -> _Norms:
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma-2: a norm before and after each sub-block
        return _Norms("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                      "post_feedforward_layernorm")
    if hasattr(layer, "post_self_attn_layernorm"):  # GLM-4
        return _Norms("input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm")
    return _Norms("input_layernorm", None, "post_attention_layernorm", None)


def decoder_stack(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder (``embed_tokens``, ``layers``, ``norm``) inside a causal-LM or vision-language model."""
    candidates = [model, getattr(model, "model", None), getattr(model, "language_model", None)]
    inner = getattr(model, "model", None)
    if inner is not None:
        candidates.append(getattr(inner, "language_model", None))
    for c in candidates:
        if c is not None and hasattr(c, "layers") and hasattr(c, "embed_tokens") and hasattr(c, "norm"):
            return c
    raise ModelFormatError(f"{type(model).__name__} has no decoder stack (embed_tokens, layers, norm)")


def is_decoder_lm(model: torch.nn.Module) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type not in LLM_MODEL_TYPES:
        return False
    try:
        decoder_stack(model)
    except ModelFormatError:
        return False
    return True


class LLMAdapter(EncoderAdapter):
    """A decoder LM read through ``hidden_states`` taps (see ``engine.readout``, kind ``hidden``).

    ``max_length`` is the pipeline's token limit after templating; ``use_mask`` False feeds the
    model no attention mask (CogView4), True the tokenizer's. The batch's ``attention_mask`` always
    marks the prompt's own tokens, for the readout's pooling and the second moment.
    """

    family = "llm"
    readouts = ("hidden",)

    def __init__(self, model: torch.nn.Module, *, max_length: int = 512, use_mask: bool = True) -> None:
        super().__init__(model)
        from engine.readout import Readout

        self.stack = decoder_stack(model)
        self._max_length = int(max_length)
        self.use_mask = use_mask
        self.norms = [_norms_of(layer) for layer in self.layers()]
        self.readout = Readout("hidden", layers=(-1,))

    # ----- structure -----------------------------------------------------------------------------
    def layers(self) -> Sequence[torch.nn.Module]:
        return self.stack.layers

    def fc2(self, layer: int) -> torch.nn.Linear:
        return self.layers()[layer].mlp.down_proj

    def mlp(self, layer: int) -> torch.nn.Module:
        return self.layers()[layer].mlp

    def upstream_modules(self, layer: int) -> list[tuple[str, torch.nn.Module]]:
        mods: list[tuple[str, torch.nn.Module]] = [("embed_tokens", self.stack.embed_tokens)]
        mods += [(f"layers.{i}", self.layers()[i]) for i in range(layer)]
        block, norms = self.layers()[layer], self.norms[layer]
        for name in (norms.attn_in, "self_attn", norms.attn_out, norms.mlp_in):
            if name is not None:
                mods.append((f"layers.{layer}.{name}", getattr(block, name)))
        mlp = block.mlp
        mods += [(f"layers.{layer}.mlp.{n}", getattr(mlp, n)) for n in ("gate_proj", "up_proj", "gate_up_proj")
                 if hasattr(mlp, n)]
        return mods

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenization_mode(self) -> str:
        return f"template-{'masked' if self.use_mask else 'unmasked'}"

    # ----- forward pieces ------------------------------------------------------------------------
    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Embeddings and, per layer, the keyword arguments the model's own forward passes to it."""
        store: list[dict[str, Any]] = []
        real = self.stack.layers
        self.stack.layers = torch.nn.ModuleList([_Recorder(layer, store) for layer in real])
        try:
            self.stack(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask") if self.use_mask else None,
                use_cache=False,
            )
        finally:
            self.stack.layers = real
        if len(store) != len(real):
            raise ModelFormatError(f"the decoder ran {len(store)} of its {len(real)} layers; cannot split it")
        hidden = store[0].pop("hidden")
        for kw in store[1:]:
            kw.pop("hidden")
        return hidden, store

    def run_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        out = self.layers()[layer](hidden, **mask[layer])
        return out[0] if isinstance(out, tuple) else out

    def _norm(self, layer: int, name: str | None, x: torch.Tensor) -> torch.Tensor:
        return x if name is None else getattr(self.layers()[layer], name)(x)

    def split_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        block, norms = self.layers()[layer], self.norms[layer]
        attn, _ = block.self_attn(hidden_states=self._norm(layer, norms.attn_in, hidden), **mask[layer])
        residual = hidden + self._norm(layer, norms.attn_out, attn)
        captured: list[torch.Tensor] = []

        def grab(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0])
            raise _Stop

        handle = block.mlp.down_proj.register_forward_pre_hook(grab)
        try:
            block.mlp(self._norm(layer, norms.mlp_in, residual))
        except _Stop:
            pass
        finally:
            handle.remove()
        key = captured[0]
        weight = block.mlp.down_proj.weight
        if key.dtype != weight.dtype and weight.is_floating_point():  # down_proj kept fp32 under bf16
            key = key.to(weight.dtype)
        return residual, key

    def finish_layer(self, layer: int, residual: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        out = self._norm(layer, self.norms[layer].mlp_out, mlp_out.to(residual.dtype))
        return residual + out

    def head(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.read({self.num_layers - 1: hidden}, batch)

    def read(self, outputs: dict[int, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tapped ``hidden_states`` stacked on channels, pooled over the read tokens (B, taps*H).

        Each tap is pooled before stacking (the same numbers as pooling the stacked sequence), so a readout
        over every layer (HiDream's Llama) never builds a (B, T, layers*H) copy.
        """
        last = self.num_layers - 1
        weights = self.read_mask(batch).unsqueeze(-1)
        parts = []
        for tap in self.readout.taps(self.num_layers):
            h = outputs[tap]
            h = self.stack.norm(h) if tap == last else h  # hidden_states[-1] is post-norm
            w = weights.to(h.dtype)
            parts.append((h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0))
        return torch.cat(parts, dim=-1)

    def read_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) 1 where the denoiser reads a token of the prompt: not padding, not a dropped template
        token (``readout.drop`` of them from ``readout.drop_from``, counted from the first real token)."""
        mask = batch["attention_mask"].clone()
        drop, start = self.readout.drop, self.readout.drop_from
        if drop:
            first = mask.argmax(dim=1)  # left padding: the sequence starts at the first real token
            pos = torch.arange(mask.shape[1], device=mask.device)[None, :] - first[:, None]
            mask = mask * ((pos < start) | (pos >= start + drop)).to(mask.dtype)
        return mask
