"""Module paths as adapter files spell them.

transformers 5 builds ``CLIPTextModel`` flat (``encoder.layers.N``) where v4, every published LoRA and
``CLIPTextModelWithProjection`` say ``text_model.encoder.layers.N``. Files are written in the
``text_model.`` form, which diffusers loads into both (readers look keys up from the module names the
export recorded, so nothing maps back).
"""

from __future__ import annotations

CLIP_ROOT = "text_model."
_FLAT_CLIP = "encoder.layers."


def canonical_path(module: str) -> str:
    """The path an adapter file uses for ``module`` (``text_model.`` before a flat CLIP layer)."""
    return CLIP_ROOT + module if module.startswith(_FLAT_CLIP) else module

