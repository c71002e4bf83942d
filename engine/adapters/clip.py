"""CLIP text encoders (transformers 5): ``CLIPTextModel`` (flattened) and ``CLIPTextModelWithProjection``."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_causal_mask

from engine.adapters.base import EncoderAdapter, LayerState


class ClipAdapter(EncoderAdapter):
    """Layer l: h' = h + attn(ln1(h)); key = act(fc1(ln2(h'))); out = h' + fc2(key).

    Features are those of the model itself: final LayerNorm, the hidden state at the pooled EOS
    position, then ``text_projection`` when the model has one.
    """

    family = "clip"
    normalized_features = False
    readouts = ("final", "pooler", "penultimate", "penultimate+embeds")

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        # CLIPTextModelWithProjection keeps the transformer under .text_model; CLIPTextModel is it.
        self.text = getattr(model, "text_model", model)
        self.projection: torch.nn.Module | None = getattr(model, "text_projection", None)

    def layers(self) -> Sequence[torch.nn.Module]:
        return self.text.encoder.layers

    def fc2(self, layer: int) -> torch.nn.Linear:
        return self.layers()[layer].mlp.fc2

    def mlp(self, layer: int) -> torch.nn.Module:
        return self.layers()[layer].mlp

    def upstream_modules(self, layer: int) -> list[tuple[str, torch.nn.Module]]:
        mods: list[tuple[str, torch.nn.Module]] = [("embeddings", self.text.embeddings)]
        mods += [(f"layers.{i}", self.layers()[i]) for i in range(layer)]
        block = self.layers()[layer]
        mods += [
            (f"layers.{layer}.layer_norm1", block.layer_norm1),
            (f"layers.{layer}.self_attn", block.self_attn),
            (f"layers.{layer}.layer_norm2", block.layer_norm2),
            (f"layers.{layer}.mlp.fc1", block.mlp.fc1),
        ]
        return mods

    @property
    def max_length(self) -> int:
        return int(self.text.config.max_position_embeddings)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        hidden = self.text.embeddings(input_ids=batch["input_ids"])
        # The same call CLIPTextModel.forward makes, so the mask (causal + padding) is the model's own.
        mask = create_causal_mask(
            config=self.text.config,
            inputs_embeds=hidden,
            attention_mask=batch.get("attention_mask"),
            past_key_values=None,
        )
        return hidden, mask

    def run_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        return self.layers()[layer](hidden, mask, is_causal=True)

    def split_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.layers()[layer]
        attn, _ = block.self_attn(hidden_states=block.layer_norm1(hidden), attention_mask=mask, is_causal=True)
        residual = hidden + attn
        mlp = block.mlp
        key = mlp.activation_fn(mlp.fc1(block.layer_norm2(residual)))
        return residual, key

    def finish_layer(self, layer: int, residual: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        return residual + mlp_out

    def pool_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Row-wise position the model pools at (mirrors CLIPTextModel.forward)."""
        ids = input_ids.to(torch.int)
        eos = self.text.eos_token_id
        if eos == 2:  # legacy configs: the EOS token has the highest id
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    def head(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.text.final_layer_norm(hidden)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, self.pool_positions(batch["input_ids"]).to(hidden.device)]
        return self.projection(pooled) if self.projection is not None else pooled

    def read(self, outputs: dict[int, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = torch.arange(batch["input_ids"].shape[0])
        eos = self.pool_positions(batch["input_ids"])
        return self.read_rows({t: h[rows.to(h.device), eos.to(h.device)] for t, h in outputs.items()})

    def read_rows(self, at_eos: dict[int, torch.Tensor]) -> torch.Tensor:
        """The readout from the tap layers' hidden states at each row's EOS position (B, H each)."""
        kind, last = self.readout.kind, self.num_layers - 1
        if kind == "penultimate":
            return at_eos[last - 1]
        pooled = self.text.final_layer_norm(at_eos[last])
        if kind == "pooler":
            return pooled
        embeds = self.projection(pooled) if self.projection is not None else pooled
        if kind == "final":
            return embeds
        return torch.cat([at_eos[last - 1], self.readout.embeds_weight * embeds], dim=-1)

    # ----- fast per-step forward -------------------------------------------------------------
    def stepper(self, state: LayerState, index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """features(delta), recomputing only what delta can change.

        Attention is causal, so positions before the lookup token never see delta and positions
        after the pooled (EOS) one never reach the feature: per step, layers l+1.. run only on
        positions idx..eos of each row, attending to keys/values of the earlier positions that
        were computed once from the unedited pass; the last layer's attention output and MLP are
        needed at the EOS row alone. Identical in exact arithmetic to ``suffix``. ``delta`` is (H)
        or (B, H), one per row, as in ``EncoderAdapter.stepper``.
        """
        layers = self.layers()
        first = state.layer + 1
        taps = self.taps()
        stop = max(taps)  # deepest layer the readout needs
        batch, mask_in = state.batch, state.batch["attention_mask"]
        device = state.mlp_out.device
        n_rows, seq = batch["input_ids"].shape
        index = index.to(device)
        eos = self.pool_positions(batch["input_ids"]).to(device)
        if bool((eos < index).any()) or bool((mask_in.gather(1, eos[:, None]) == 0).any()):
            return super().stepper(state, index)
        span = eos - index + 1  # active positions idx..eos per row
        width = int(span.max())
        rows_b = torch.repeat_interleave(torch.arange(n_rows, device=device), span)
        offsets = torch.arange(rows_b.shape[0], device=device) - torch.repeat_interleave(torch.cumsum(span, 0) - span, span)
        rows_p = index[rows_b] + offsets  # absolute position of each active row
        is_lookup = offsets == 0
        last_rows = torch.cumsum(span, 0) - 1  # the EOS row of each prompt in the packed order
        # query slot (b, a) at absolute position idx_b + a may attend to keys t <= idx_b + a
        key_pos = torch.arange(seq, device=device)
        allowed = key_pos[None, None, :] <= (index[:, None, None] + torch.arange(width, device=device)[None, :, None])
        allowed = allowed & mask_in.bool()[:, None, :]

        # unedited keys/values of every later layer, for the positions delta cannot reach
        cached_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        hidden = self.finish_layer(state.layer, state.residual, state.mlp_out)
        for j in range(first, stop + 1):
            attn = layers[j].self_attn
            normed = layers[j].layer_norm1(hidden)
            cached_kv.append((attn.k_proj(normed), attn.v_proj(normed)))
            if j < stop:
                hidden = self.run_layer(j, hidden, state.mask)
        base = (state.residual[rows_b, rows_p], state.mlp_out[rows_b, rows_p])
        rows_n = torch.arange(n_rows, device=device)
        fixed_taps = {t: h[rows_n, eos] for t, h in (state.taps or {}).items()}  # below the edited layer

        def features(delta: torch.Tensor) -> torch.Tensor:
            residual, mlp_out = base
            if delta.ndim == 2:  # one delta per prompt row (the per-row contract): spread to its positions
                delta = delta[rows_b]
            x = residual + (mlp_out + delta.to(mlp_out.dtype) * is_lookup[:, None].to(mlp_out.dtype))
            at_eos = dict(fixed_taps)
            if state.layer in taps and first <= stop:
                at_eos[state.layer] = x[last_rows]
            for j, (k_cache, v_cache) in zip(range(first, stop + 1), cached_kv):
                block = layers[j]
                attn = block.self_attn
                last = j == stop
                normed = block.layer_norm1(x)
                keys = k_cache.index_put((rows_b, rows_p), attn.k_proj(normed))
                values = v_cache.index_put((rows_b, rows_p), attn.v_proj(normed))
                if last:  # only the EOS rows feed the pooled feature
                    x, normed = x[last_rows], normed[last_rows]
                    q_b, q_a = torch.arange(n_rows, device=device), span - 1
                else:
                    q_b, q_a = rows_b, offsets
                query = torch.zeros(n_rows, width, x.shape[-1], dtype=x.dtype, device=device)
                query = query.index_put((q_b, q_a), attn.q_proj(normed))
                heads, head_dim = attn.num_heads, attn.head_dim
                out = F.scaled_dot_product_attention(
                    query.view(n_rows, width, heads, head_dim).transpose(1, 2),
                    keys.view(n_rows, seq, heads, head_dim).transpose(1, 2),
                    values.view(n_rows, seq, heads, head_dim).transpose(1, 2),
                    attn_mask=allowed[:, None],
                    scale=attn.scale,
                )
                out = out.transpose(1, 2).reshape(n_rows, width, -1)[q_b, q_a]
                x = x + attn.out_proj(out)
                x = x + block.mlp(block.layer_norm2(x))
                if j in taps and not last:
                    at_eos[j] = x[last_rows]
            if first > stop:  # edited the deepest tap layer: every active row is already final
                x = x[last_rows]
            at_eos[stop] = x
            return self.read_rows(at_eos)

        return features
