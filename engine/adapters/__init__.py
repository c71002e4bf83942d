"""Encoder adapters: ``adapter_for(module)`` picks the one for a text encoder."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.adapters.base import EncoderAdapter, LayerState
from engine.adapters.bert import BertAdapter, read_pooling_config
from engine.adapters.clip import ClipAdapter
from engine.adapters.llm import LLMAdapter, is_decoder_lm
from engine.adapters.t5 import T5Adapter
from engine.errors import ModelFormatError

__all__ = ["EncoderAdapter", "LayerState", "ClipAdapter", "BertAdapter", "T5Adapter", "LLMAdapter", "adapter_for", "read_pooling_config"]


def adapter_for(
    model: torch.nn.Module, *, pooling: str | None = None, normalize: bool | None = None,
    pad_to: int | None = None, use_mask: bool = True,
) -> EncoderAdapter:
    """The adapter for a text encoder module (puts the module in eval mode: edits assume no dropout).

    For BERT, ``pooling``/``normalize`` default to the model folder's sentence-transformers
    pooling config when there is one, else mean pooling with normalisation. For T5,
    ``pad_to``/``use_mask`` give the input format (a pipeline's: fixed length, no mask). For a decoder
    LM, ``pad_to`` is the token limit after templating (default 512) and ``use_mask`` whether the model
    sees the attention mask.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    model.eval()
    if model_type in ("clip_text_model", "clip") and hasattr(getattr(model, "text_model", model), "encoder"):
        return ClipAdapter(model)
    if model_type in ("t5", "umt5") and hasattr(getattr(model, "encoder", None), "block"):
        return T5Adapter(model, pad_to=pad_to, use_mask=use_mask)
    if is_decoder_lm(model):
        return LLMAdapter(model, max_length=pad_to or 512, use_mask=use_mask)
    if model_type == "bert" and hasattr(model, "encoder") and hasattr(model, "embeddings"):
        found = None
        name_or_path = getattr(model.config, "_name_or_path", "") or ""
        if name_or_path and Path(name_or_path).is_dir():
            found = read_pooling_config(Path(name_or_path))
        mode, norm = found if found else ("mean", True)
        return BertAdapter(
            model,
            pooling=pooling or mode,
            normalize=norm if normalize is None else normalize,
        )
    raise ModelFormatError(
        f"no ReFACT adapter for {type(model).__name__} (model_type {model_type!r}); "
        "use a CLIP, T5 or decoder-LM (Llama, Mistral, Qwen, Gemma-2, GLM) text encoder or a BERT sentence encoder"
    )
