"""kohya / sd-scripts LoRA files, the naming ComfyUI and A1111 load.

``lora_te_<path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` for a single text encoder
(SD1/SD2), ``lora_te1_`` / ``lora_te2_`` per encoder where a pipeline has several (SDXL, SD3, FLUX's CLIP),
``lora_unet_`` for UNet matrices. alpha = rank, so the scale alpha / rank is 1 and W + up @ down exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from engine.errors import DeltaIntegrityError
from engine.export.adapter import TEXT_LORA_MODULES, Adapter, AdapterMatrix, is_text_component
from engine.export.keys import canonical_path
from engine.export.tensors import Factors, factor_tensors, read_factors, write_file

FILE = "refact_kohya.safetensors"


def file_name(adapter: Adapter, stacked: bool) -> str:
    return FILE if stacked else f"{adapter.name}.kohya.safetensors"


def prefix(component: str, text_components: Sequence[str]) -> str:
    """The kohya prefix of ``component`` in a pipeline with these text encoders."""
    if component == "unet":
        return "lora_unet_"
    if len(text_components) == 1:
        return "lora_te_"
    index = component[len("text_encoder"):].lstrip("_") or "1"
    return f"lora_te{index}_"


def reachable(m: AdapterMatrix) -> bool:
    """Matrices this format holds: CLIP projections of a text encoder, and the UNet's Linears."""
    if is_text_component(m.component):
        return m.module.rsplit(".", 1)[-1] in TEXT_LORA_MODULES
    return m.component == "unet"


def _keys(text_components: Sequence[str]):
    def keys(component: str, module: str) -> tuple[str, str]:
        stem = prefix(component, text_components) + canonical_path(module).replace(".", "_")
        return f"{stem}.lora_down.weight", f"{stem}.lora_up.weight"
    return keys


def write(path: Path, adapter: Adapter, meta: dict[str, str], text_components: Sequence[str]) -> None:
    keys = _keys(text_components)
    tensors = factor_tensors(adapter, keys)
    for m in adapter.matrices:
        tensors[keys(m.component, m.module)[0].replace(".lora_down.weight", ".alpha")] = torch.tensor(float(m.rank))
    write_file(path, tensors, meta)


def read(path: Path, wanted: list[AdapterMatrix], text_components: Sequence[str]) -> Factors:
    keys = _keys(text_components)
    found, rest = read_factors(path, wanted, keys)
    for (component, module), (up, down) in found.items():
        alpha = rest.get(keys(component, module)[0].replace(".lora_down.weight", ".alpha"))
        if alpha is not None and float(alpha) != float(up.shape[1]):  # scale alpha/rank back into up
            found[(component, module)] = (up * (float(alpha) / up.shape[1]), down)
        if not torch.isfinite(up).all() or not torch.isfinite(down).all():
            raise DeltaIntegrityError(f"{path}: non-finite factors for {component}.{module}")
    return found
