"""Reading and writing the factor tensors of an adapter file, shared by every format."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from engine.errors import DeltaIntegrityError
from engine.export.adapter import Adapter, AdapterMatrix
from engine.files import save_safetensors_atomic

# (component, module) -> (down key, up key) in one format
KeyFn = Callable[[str, str], tuple[str, str]]
Factors = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # (component, module) -> (up, down)


def factor_tensors(adapter: Adapter, keys: KeyFn) -> dict[str, torch.Tensor]:
    """down (k, in) and up (out, k) of every matrix under the format's keys, float32."""
    out: dict[str, torch.Tensor] = {}
    for m in adapter.matrices:
        down_key, up_key = keys(m.component, m.module)
        out[down_key] = m.down.to(torch.float32).contiguous()
        out[up_key] = m.up.to(torch.float32).contiguous()
    return out


def write_file(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    save_safetensors_atomic(path, tensors, {"format": "pt", **{k: str(v) for k, v in meta.items()}})


def read_factors(path: Path, wanted: list[AdapterMatrix], keys: KeyFn) -> tuple[Factors, dict[str, torch.Tensor]]:
    """The (up, down) of each wanted matrix from ``path`` (DeltaIntegrityError naming what is missing
    or misshapen), and the file's other tensors (a format's extras, e.g. kohya's alpha)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise DeltaIntegrityError(f"{path} is not a readable safetensors file ({exc.__class__.__name__})") from exc
    found: Factors = {}
    for m in wanted:
        down_key, up_key = keys(m.component, m.module)
        down, up = tensors.pop(down_key, None), tensors.pop(up_key, None)
        if down is None or up is None:
            raise DeltaIntegrityError(f"{path} lacks the factors of {m.component}.{m.module}")
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise DeltaIntegrityError(f"{path}: the factors of {m.component}.{m.module} are misshapen")
        found[(m.component, m.module)] = (up.to(torch.float32), down.to(torch.float32))
    return found, tensors
