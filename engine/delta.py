"""A stored edit: the rank-one factors (u, r) of one fc2 matrix, W += outer(r, u).

Deltas are a few KB, apply and revert in O(out x in), and are saved as safetensors written
atomically (temporary file + rename) with a sha256 the caller records to detect tampering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open

from engine.adapters.base import EncoderAdapter
from engine.errors import DeltaIntegrityError
from engine.files import file_sha256, save_safetensors_atomic

FORMAT = "refact-delta/1"


def _adapter(model: Any) -> EncoderAdapter:
    return model if isinstance(model, EncoderAdapter) else model.adapter


def add_rank_one(linear: torch.nn.Linear, u: torch.Tensor, r: torch.Tensor, sign: float = 1.0) -> None:
    """W += sign * outer(r, u), computed in float32 on W's device, stored in W's dtype."""
    w = linear.weight
    if w.shape != (r.numel(), u.numel()):
        raise DeltaIntegrityError(
            f"delta shape ({r.numel()} x {u.numel()}) does not fit weight {tuple(w.shape)}; it belongs to another model"
        )
    with torch.no_grad():
        update = torch.outer(r.to(w.device, torch.float32), u.to(w.device, torch.float32))
        if w.dtype == torch.float32:
            w.add_(update, alpha=sign)
        else:
            w.copy_((w.float() + sign * update).to(w.dtype))


@dataclass
class EditDelta:
    """Rank-one update of ``module`` (the fc2 of ``layer``): W += outer(r, u); u, r float32 on CPU."""

    layer: int
    module: str
    u: torch.Tensor
    r: torch.Tensor
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.u = self.u.detach().to("cpu", torch.float32).reshape(-1).contiguous()
        self.r = self.r.detach().to("cpu", torch.float32).reshape(-1).contiguous()

    def _linear(self, model: Any) -> torch.nn.Linear:
        adapter = _adapter(model)
        try:
            linear = adapter.model.get_submodule(self.module)
        except AttributeError as exc:
            raise DeltaIntegrityError(f"delta targets {self.module!r}, which this model does not have") from exc
        if not isinstance(linear, torch.nn.Linear):
            raise DeltaIntegrityError(f"delta targets {self.module!r}, which is not a linear layer")
        return linear

    def apply(self, model: Any) -> None:
        """Add the update to the model's weight (``model``: LoadedModel-like or an adapter)."""
        add_rank_one(self._linear(model), self.u, self.r, 1.0)

    def revert(self, model: Any) -> None:
        """Subtract the update (exact up to float rounding)."""
        add_rank_one(self._linear(model), self.u, self.r, -1.0)

    def update_matrix(self) -> torch.Tensor:
        return torch.outer(self.r, self.u)

    def save(self, path: Path) -> str:
        """Write atomically; return the sha256 of the written file."""
        path = Path(path)
        meta = {str(k): str(v) for k, v in self.meta.items()}
        meta.update({"format": FORMAT, "layer": str(self.layer), "module": self.module})
        save_safetensors_atomic(path, {"u": self.u, "r": self.r}, meta, fsync=True)
        return file_sha256(path)

    @classmethod
    def load(cls, path: Path, expected_sha256: str | None = None) -> "EditDelta":
        """Read a saved delta; DeltaIntegrityError if the checksum or the contents are wrong."""
        path = Path(path)
        if not path.is_file():
            raise DeltaIntegrityError(f"delta file {path} is missing; the edit cannot be re-applied")
        if expected_sha256 is not None and file_sha256(path) != expected_sha256:
            raise DeltaIntegrityError(f"delta file {path} does not match its recorded sha256; it was changed or damaged")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                u, r = f.get_tensor("u"), f.get_tensor("r")
        except Exception as exc:
            raise DeltaIntegrityError(f"delta file {path} is not a readable delta ({exc.__class__.__name__})") from exc
        if meta.get("format") != FORMAT or "layer" not in meta or "module" not in meta:
            raise DeltaIntegrityError(f"delta file {path} lacks the refact-delta metadata")
        if u.ndim != 1 or r.ndim != 1 or not (torch.isfinite(u).all() and torch.isfinite(r).all()):
            raise DeltaIntegrityError(f"delta file {path} holds malformed or non-finite vectors")
        layer, module = int(meta.pop("layer")), meta.pop("module")
        meta.pop("format")
        return cls(layer=layer, module=module, u=u, r=r, meta=meta)


def apply_deltas(model: Any, deltas: Iterable[EditDelta]) -> int:
    """Apply deltas in order; if one fails, revert those already applied and re-raise."""
    applied: list[EditDelta] = []
    try:
        for d in deltas:
            d.apply(model)
            applied.append(d)
    except Exception:
        for d in reversed(applied):
            d.revert(model)
        raise
    return len(applied)
