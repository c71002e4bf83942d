"""BERT-family encoders (``BertModel``) used as sentence encoders.

The "fc2" is ``encoder.layer[l].output.dense``; its input is ``intermediate.dense`` + activation.
Unlike CLIP, the dense output goes through dropout, the residual add and a LayerNorm, so delta is
added to the dense output and the layer is finished from there (adding it after the LayerNorm
would not be equivalent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask

from engine.adapters.base import EncoderAdapter

POOLING_MODES = ("mean", "cls")


def read_pooling_config(folder: Path) -> tuple[str, bool] | None:
    """(pooling mode, normalize) from a sentence-transformers folder, or None if it has none."""
    pool_file = Path(folder) / "1_Pooling" / "config.json"
    if not pool_file.is_file():
        return None
    cfg = json.loads(pool_file.read_text(encoding="utf-8"))
    mode = "cls" if cfg.get("pooling_mode_cls_token") and not cfg.get("pooling_mode_mean_tokens") else "mean"
    normalize = False
    modules_file = Path(folder) / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    return mode, normalize


def read_max_seq_length(folder: Path) -> int | None:
    """sentence-transformers' ``max_seq_length`` (inputs longer than this it truncates), or None."""
    cfg_file = Path(folder) / "sentence_bert_config.json"
    if not cfg_file.is_file():
        return None
    value = json.loads(cfg_file.read_text(encoding="utf-8")).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None


class BertAdapter(EncoderAdapter):
    """Post-LN BERT layers; features = mean (or CLS) pooling over attended tokens, optionally L2-normalised
    (a sentence-transformers folder's mean + Normalize modules give exactly SentenceTransformer.encode)."""

    family = "bert"

    def __init__(self, model: torch.nn.Module, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__(model)
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.pooling = pooling
        self.normalized_features = normalize
        # Within sentence-transformers' own limit (all-MiniLM-L6-v2: 256 of 512 positions) the features
        # equal SentenceTransformer.encode; a longer text is refused rather than truncated.
        folder = getattr(model.config, "_name_or_path", "") or ""
        self.seq_limit = read_max_seq_length(Path(folder)) if folder and Path(folder).is_dir() else None

    @property
    def last_editable(self) -> int:
        """Mean pooling reads the subject's own token, so the last layer reaches it; CLS does not."""
        return self.num_layers - 1 if self.pooling == "mean" else super().last_editable

    def layers(self) -> Sequence[torch.nn.Module]:
        return self.model.encoder.layer

    def fc2(self, layer: int) -> torch.nn.Linear:
        return self.layers()[layer].output.dense

    def mlp(self, layer: int) -> torch.nn.Module:
        return self.layers()[layer].output.dense

    def upstream_modules(self, layer: int) -> list[tuple[str, torch.nn.Module]]:
        mods: list[tuple[str, torch.nn.Module]] = [("embeddings", self.model.embeddings)]
        mods += [(f"layer.{i}", self.layers()[i]) for i in range(layer)]
        block = self.layers()[layer]
        mods += [(f"layer.{layer}.attention", block.attention), (f"layer.{layer}.intermediate", block.intermediate)]
        return mods

    @property
    def max_length(self) -> int:
        positions = int(self.model.config.max_position_embeddings)
        return min(positions, self.seq_limit) if self.seq_limit else positions

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        hidden = self.model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        mask = create_bidirectional_mask(
            config=self.model.config, inputs_embeds=hidden, attention_mask=batch.get("attention_mask")
        )
        return hidden, mask

    def run_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        return self.layers()[layer](hidden, mask)

    def split_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.layers()[layer]
        attention_output, _ = block.attention(hidden, mask)
        key = block.intermediate(attention_output)
        return attention_output, key

    def finish_layer(self, layer: int, residual: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        out = self.layers()[layer].output
        return out.LayerNorm(out.dropout(mlp_out) + residual)

    def head(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1) if self.normalized_features else pooled
