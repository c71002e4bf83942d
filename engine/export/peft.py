"""Standard PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``), one per text
encoder: what transformers' ``encoder.load_adapter(folder)`` reads. This carries the matrices diffusers'
LoRA loader cannot reach (T5's ``wo``, an LLM encoder's ``down_proj``), and any CLIP one as well.

Every module gets r = its number of stacked columns and lora_alpha = r, so PEFT's scale is 1 and the
adapter adds exactly up @ down.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import DeltaIntegrityError
from engine.export.adapter import Adapter, AdapterMatrix
from engine.export.tensors import Factors, factor_tensors, read_factors, write_file

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ROOT = "peft"


def folder_name(component: str, adapter: Adapter, stacked: bool) -> str:
    """Where ``component``'s part of ``adapter`` goes, relative to the export folder."""
    return f"{ROOT}/{component}" if stacked else f"{ROOT}/{component}/{adapter.name}"


def keys(component: str, module: str) -> tuple[str, str]:
    return f"base_model.model.{module}.lora_A.weight", f"base_model.model.{module}.lora_B.weight"


def write(folder: Path, matrices: list[AdapterMatrix], base: str, meta: dict[str, str]) -> None:
    """One component's matrices as a PEFT LoRA folder (config written by peft itself)."""
    from peft import LoraConfig  # heavy import, only when a PEFT folder is written

    ranks = {m.module: m.rank for m in matrices}
    first = matrices[0].rank
    config = LoraConfig(
        r=first, lora_alpha=first, target_modules=sorted(ranks), lora_dropout=0.0, bias="none",
        rank_pattern={k: v for k, v in ranks.items() if v != first},
        alpha_pattern={k: v for k, v in ranks.items() if v != first},
        base_model_name_or_path=base, init_lora_weights=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    write_file(folder / WEIGHTS, factor_tensors(Adapter("peft", matrices), keys), meta)


def read(folder: Path, wanted: list[AdapterMatrix]) -> Factors:
    if not (folder / CONFIG).is_file():
        raise DeltaIntegrityError(f"{folder} is not a PEFT adapter folder (no {CONFIG})")
    found, _ = read_factors(folder / WEIGHTS, wanted, keys)
    return found
