"""Stable content hashes of tensors and modules (provenance, cache keys, rollback checks)."""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch


def hash_named_tensors(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in the given order."""
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        # view as bytes; works for every dtype incl. bfloat16 and 0-dim buffers (BatchNorm counters)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (parameters and buffers), sorted by name."""
    sd = module.state_dict()
    return hash_named_tensors((k, sd[k]) for k in sorted(sd))
