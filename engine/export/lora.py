"""diffusers LoRA files: ``<component>.<path>.lora_linear_layer.down.weight`` / ``.up.weight``.

This is the layout diffusers 0.42 recognises for an fc2-only text-encoder LoRA (PEFT's
``lora_A``/``lora_B`` names fail its format detection there). No alpha key: diffusers then uses
alpha = rank, i.e. W + up @ down exactly. Denoiser matrices (TIME / UCE's ``attn2.to_k``/``to_v``)
go in the same file under ``unet.<path>.lora_A.weight`` / ``lora_B.weight``, which its UNet loader takes.
"""

from __future__ import annotations

from pathlib import Path

from engine.export.adapter import Adapter, AdapterMatrix, is_text_component
from engine.export.keys import canonical_path
from engine.export.tensors import Factors, factor_tensors, read_factors, write_file

FILE = "pytorch_lora_weights.safetensors"


def file_name(adapter: Adapter, stacked: bool) -> str:
    return FILE if stacked else f"{adapter.name}.safetensors"


def keys(component: str, module: str) -> tuple[str, str]:
    if is_text_component(component):
        stem = f"{component}.{canonical_path(module)}.lora_linear_layer"
        return f"{stem}.down.weight", f"{stem}.up.weight"
    return f"{component}.{module}.lora_A.weight", f"{component}.{module}.lora_B.weight"


def write(path: Path, adapter: Adapter, meta: dict[str, str]) -> None:
    write_file(path, factor_tensors(adapter, keys), meta)


def read(path: Path, wanted: list[AdapterMatrix]) -> Factors:
    found, _ = read_factors(path, wanted, keys)
    return found
