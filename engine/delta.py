"""A stored edit: low-rank updates of named matrices, W += left @ right.T for each.

One ``EditDelta`` holds every matrix one edit changed: a ReFACT edit of one encoder is a single
rank-one update (left = r, right = u); a multi-encoder edit has one update per encoder slot; a batch
or a closed-form UNet method (TIME, UCE) has updates of rank k. Each update names the pipeline
component it belongs to ("text_encoder", "text_encoder_2", "unet", ...) and the module inside it.

Deltas are saved as safetensors written atomically (temporary file + rename), with a sha256 the
caller records to detect tampering. Format ``refact-delta/2``; v0.1 files (``refact-delta/1``,
one rank-one fc2 update of ``text_encoder``) still load.

``WeightSnapshot`` is the one way weights are put back: copies taken before a change, copied back in
place bit-exactly (never by subtracting the update again); ``applied`` uses it for a scoped edit.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import safe_open

from engine.adapters.base import EncoderAdapter
from engine.errors import DeltaIntegrityError, InsertionRefusedError
from engine.files import file_sha256, save_safetensors_atomic

FORMAT_V1 = "refact-delta/1"
FORMAT = "refact-delta/2"
DEFAULT_COMPONENT = "text_encoder"


def add_low_rank(linear: torch.nn.Module, left: torch.Tensor, right: torch.Tensor, sign: float = 1.0) -> None:
    """W += sign * left @ right.T, computed in float32 on W's device, stored in W's dtype."""
    w = linear.weight
    if left.ndim == 1:
        left, right = left.reshape(-1, 1), right.reshape(-1, 1)
    if tuple(w.shape) != (left.shape[0], right.shape[0]) or left.shape[1] != right.shape[1]:
        raise DeltaIntegrityError(
            f"delta shape ({left.shape[0]} x {right.shape[0]}) does not fit weight {tuple(w.shape)}; "
            "it belongs to another model"
        )
    with torch.no_grad():
        update = left.to(w.device, torch.float32) @ right.to(w.device, torch.float32).T
        if w.dtype == torch.float32:
            w.add_(update, alpha=sign)
        else:
            w.copy_((w.float() + sign * update).to(w.dtype))


def add_rank_one(linear: torch.nn.Linear, u: torch.Tensor, r: torch.Tensor, sign: float = 1.0) -> None:
    """W += sign * outer(r, u) (the rank-one case of ``add_low_rank``)."""
    add_low_rank(linear, r.reshape(-1, 1), u.reshape(-1, 1), sign)


def component_module(model: Any, component: str) -> torch.nn.Module:
    """The ``torch.nn.Module`` a delta's ``component`` names on ``model``.

    ``model`` may be an adapter or a bare module (used as is), an object with
    ``component_module(name)`` (a multi-slot LoadedModel), or anything with ``.adapter`` /
    ``.text_encoder`` / ``.pipeline`` attributes.
    """
    if isinstance(model, EncoderAdapter):
        return model.model
    if isinstance(model, torch.nn.Module):
        return model
    resolver = getattr(model, "component_module", None)
    if callable(resolver):
        return resolver(component)
    if component == DEFAULT_COMPONENT:
        adapter = getattr(model, "adapter", None)
        if adapter is not None:
            return adapter.model
        if getattr(model, "text_encoder", None) is not None:
            return model.text_encoder
    pipeline = getattr(model, "pipeline", None)
    found = getattr(pipeline, component, None) if pipeline is not None else None
    if isinstance(found, torch.nn.Module):
        return found
    raise DeltaIntegrityError(f"delta edits component {component!r}, which this model does not have")


@dataclass
class MatrixUpdate:
    """W += left @ right.T for the Linear ``module`` inside pipeline component ``component``.

    left: (out, k), right: (in, k), float32 on CPU. ``layer`` is the encoder layer when known.
    """

    component: str
    module: str
    left: torch.Tensor
    right: torch.Tensor
    layer: int | None = None

    def __post_init__(self) -> None:
        left = self.left.detach().to("cpu", torch.float32)
        right = self.right.detach().to("cpu", torch.float32)
        if left.ndim == 1:
            left, right = left.reshape(-1, 1), right.reshape(-1, 1)
        self.left, self.right = left.contiguous(), right.contiguous()

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def matrix(self) -> torch.Tensor:
        """The dense update (out, in)."""
        return self.left @ self.right.T

    def linear(self, model: Any) -> torch.nn.Module:
        """The Linear this update targets on ``model``; DeltaIntegrityError if absent."""
        root = component_module(model, self.component)
        try:
            linear = root.get_submodule(self.module)
        except AttributeError as exc:
            raise DeltaIntegrityError(f"delta targets {self.module!r}, which this model does not have") from exc
        if not isinstance(getattr(linear, "weight", None), torch.Tensor) or linear.weight.ndim != 2:
            raise DeltaIntegrityError(f"delta targets {self.module!r}, which is not a linear layer")
        return linear

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.left).all() and torch.isfinite(self.right).all())


class EditDelta:
    """Every matrix update of one edit, plus string metadata.

    ``EditDelta(updates=[...], meta=...)`` is the general form. The v0.1 rank-one form
    ``EditDelta(layer=, module=, u=, r=, meta=)`` builds a single rank-one update of
    ``text_encoder`` (or ``component=``); ``.layer``, ``.module``, ``.u`` and ``.r`` read it back.
    """

    def __init__(
        self,
        updates: Iterable[MatrixUpdate] | None = None,
        meta: dict[str, str] | None = None,
        *,
        layer: int | None = None,
        module: str | None = None,
        u: torch.Tensor | None = None,
        r: torch.Tensor | None = None,
        component: str = DEFAULT_COMPONENT,
    ) -> None:
        self.updates: list[MatrixUpdate] = list(updates or [])
        if u is not None or r is not None:
            if u is None or r is None or module is None or self.updates:
                raise ValueError("a rank-one EditDelta needs layer, module, u and r, and no other updates")
            self.updates.append(
                MatrixUpdate(component=component, module=module, left=r.reshape(-1), right=u.reshape(-1), layer=layer)
            )
        self.meta: dict[str, str] = dict(meta or {})

    # -- the rank-one view (v0.1 API) ------------------------------------------------------
    def _single(self) -> MatrixUpdate:
        if len(self.updates) != 1 or self.updates[0].rank != 1:
            raise DeltaIntegrityError(
                f"this delta has {len(self.updates)} update(s) of rank "
                f"{[x.rank for x in self.updates]}; it is not a single rank-one edit"
            )
        return self.updates[0]

    @property
    def layer(self) -> int:
        layer = self._single().layer
        return -1 if layer is None else layer

    @property
    def module(self) -> str:
        return self._single().module

    @property
    def component(self) -> str:
        return self._single().component

    @property
    def u(self) -> torch.Tensor:
        return self._single().right[:, 0]

    @property
    def r(self) -> torch.Tensor:
        return self._single().left[:, 0]

    def update_matrix(self) -> torch.Tensor:
        """The dense update of a single-matrix delta."""
        if len(self.updates) != 1:
            raise DeltaIntegrityError("update_matrix() needs a delta of exactly one matrix")
        return self.updates[0].matrix()

    # -- general API --------------------------------------------------------------------------
    @property
    def components(self) -> list[str]:
        """Components touched, in first-update order."""
        return list(dict.fromkeys(x.component for x in self.updates))

    def is_finite(self) -> bool:
        return all(x.is_finite() for x in self.updates)

    def apply(self, model: Any) -> None:
        """Add every update to ``model``'s weights; if one fails, those already added are undone."""
        self._add(model, 1.0)

    def revert(self, model: Any) -> None:
        """Subtract every update (exact up to float rounding; rollback rebuilds from base instead)."""
        self._add(model, -1.0)

    def _add(self, model: Any, sign: float) -> None:
        targets = [x.linear(model) for x in self.updates]  # resolve all first: nothing half-applied
        done: list[int] = []
        try:
            for i, (x, lin) in enumerate(zip(self.updates, targets)):
                add_low_rank(lin, x.left, x.right, sign)
                done.append(i)
        except Exception:
            for i in reversed(done):
                add_low_rank(targets[i], self.updates[i].left, self.updates[i].right, -sign)
            raise

    def save(self, path: Path) -> str:
        """Write atomically (format refact-delta/2); return the sha256 of the written file."""
        path = Path(path)
        meta = {str(k): str(v) for k, v in self.meta.items()}
        layout = [{"component": x.component, "module": x.module, "layer": x.layer} for x in self.updates]
        meta.update({"format": FORMAT, "updates": json.dumps(layout)})
        tensors: dict[str, torch.Tensor] = {}
        for i, x in enumerate(self.updates):
            tensors[f"{i}.left"], tensors[f"{i}.right"] = x.left, x.right
        save_safetensors_atomic(path, tensors, meta, fsync=True)
        return file_sha256(path)

    @classmethod
    def load(cls, path: Path, expected_sha256: str | None = None) -> "EditDelta":
        """Read a saved delta (v2 or v0.1); DeltaIntegrityError if the checksum or contents are wrong."""
        path = Path(path)
        if not path.is_file():
            raise DeltaIntegrityError(f"delta file {path} is missing; the edit cannot be re-applied")
        if expected_sha256 is not None and file_sha256(path) != expected_sha256:
            raise DeltaIntegrityError(f"delta file {path} does not match its recorded sha256; it was changed or damaged")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise DeltaIntegrityError(f"delta file {path} is not a readable delta ({exc.__class__.__name__})") from exc
        fmt = meta.pop("format", None)
        if fmt == FORMAT_V1:
            updates = _v1_updates(path, meta, tensors)
        elif fmt == FORMAT:
            updates = _v2_updates(path, meta, tensors)
        else:
            raise DeltaIntegrityError(f"delta file {path} lacks the refact-delta metadata")
        delta = cls(updates=updates, meta=meta)
        if not delta.is_finite():
            raise DeltaIntegrityError(f"delta file {path} holds malformed or non-finite vectors")
        return delta


def _v1_updates(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> list[MatrixUpdate]:
    u, r = tensors.get("u"), tensors.get("r")
    if u is None or r is None or "layer" not in meta or "module" not in meta or u.ndim != 1 or r.ndim != 1:
        raise DeltaIntegrityError(f"delta file {path} holds malformed or non-finite vectors")
    try:
        layer = int(meta.pop("layer"))
    except ValueError:
        raise DeltaIntegrityError(f"delta file {path} has a non-integer layer in its metadata") from None
    return [MatrixUpdate(DEFAULT_COMPONENT, meta.pop("module"), r, u, layer)]


def _v2_updates(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> list[MatrixUpdate]:
    try:
        layout = json.loads(meta.pop("updates", ""))
    except ValueError:
        raise DeltaIntegrityError(f"delta file {path} has an unreadable update layout") from None
    if not isinstance(layout, list):
        raise DeltaIntegrityError(f"delta file {path} has an unreadable update layout")
    updates = []
    for i, entry in enumerate(layout):
        left, right = tensors.get(f"{i}.left"), tensors.get(f"{i}.right")
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("component"), str)
            and isinstance(entry.get("module"), str)
            and (entry.get("layer") is None or type(entry.get("layer")) is int)
            and left is not None and right is not None
            and left.ndim == 2 and right.ndim == 2 and left.shape[1] == right.shape[1]
        )
        if not ok:
            raise DeltaIntegrityError(f"delta file {path}: update {i} is malformed")
        updates.append(MatrixUpdate(entry["component"], entry["module"], left, right, entry.get("layer")))
    if len(tensors) != 2 * len(updates):
        raise DeltaIntegrityError(f"delta file {path} holds tensors its layout does not name")
    return updates


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


class WeightSnapshot:
    """Copies of some modules' weights (each module once), restored in place bit-exactly."""

    def __init__(self, modules: Iterable[torch.nn.Module] = ()) -> None:
        self._saved: list[tuple[torch.nn.Module, torch.Tensor]] = []
        self._seen: set[int] = set()
        for module in modules:
            self.add(module)

    @classmethod
    def of(cls, model: Any, delta: EditDelta) -> "WeightSnapshot":
        """A snapshot of every matrix ``delta`` touches (resolved before anything changes)."""
        return cls(update.linear(model) for update in delta.updates)

    def add(self, module: torch.nn.Module) -> None:
        """Also keep ``module``'s current weight (a module already kept is not copied again)."""
        if id(module) not in self._seen:
            self._seen.add(id(module))
            self._saved.append((module, module.weight.detach().clone()))

    def changed(self) -> bool:
        """Whether any kept weight differs (bit for bit) from its copy."""
        return any(not torch.equal(module.weight, weight) for module, weight in self._saved)

    def require_changed(self, why: str) -> None:
        """InsertionRefusedError(``why``) when every kept weight is still bit-identical to its copy: an
        edit that changes nothing is never applied (the caller restores)."""
        if not self.changed():
            raise InsertionRefusedError(why)

    @torch.no_grad()
    def restore(self) -> None:
        for module, weight in reversed(self._saved):
            module.weight.copy_(weight)


@contextmanager
def applied(model: Any, delta: EditDelta) -> Iterator[None]:
    """Apply ``delta`` inside the block; afterwards the touched weights are bit-exactly the old ones."""
    snap = WeightSnapshot.of(model, delta)
    delta.apply(model)
    try:
        yield
    finally:
        snap.restore()
