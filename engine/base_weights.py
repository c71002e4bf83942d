"""Temporarily give a loaded model its base (unedited) fc2 weights, restoring them bit-exactly.

ReFACT edits only change fc2 weights, so swapping the fc2 weights of the edited layers back to
their base values turns the working model into the base model without a second model copy.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from engine.delta import WeightSnapshot


def fc2_module(model, layer: int) -> torch.nn.Linear:
    """The editable fc2 Linear of ``layer``."""
    return model.adapter.fc2(layer)


def _linear(model, key: int | str) -> torch.nn.Linear:
    """fc2 by layer index, or by "<module>.weight" name inside the text encoder (the keys of
    LoadedModel.snapshot_fc2() / LoadedModel.base_fc2)."""
    if isinstance(key, str):
        te = getattr(model, "text_encoder", model)
        return te.get_submodule(key.removesuffix(".weight"))
    return fc2_module(model, key)


def base_fc2_of(model) -> dict:
    """The fc2 weights the model had when loaded (LoadedModel.base_fc2), or {} if unknown."""
    return dict(getattr(model, "base_fc2", None) or {})


@contextmanager
def fc2_weights(model, weights: dict | None) -> Iterator[None]:
    """Use ``weights`` (layer index or "<module>.weight" -> W) for fc2 inside the block; the
    previous weights come back exactly."""
    if not weights:
        yield
        return
    saved = WeightSnapshot()
    try:
        with torch.no_grad():
            for key, w in weights.items():
                linear = _linear(model, key)
                w = w.to(linear.weight.device, linear.weight.dtype)
                # Unedited layers already hold w: skipping them saves a clone and two copies per
                # matrix (bigG: 32 x 26 MB) and keeps their version counters, so upstream hashes
                # memoised on them stay valid.
                if torch.equal(linear.weight, w):
                    continue
                saved.add(linear)
                linear.weight.copy_(w)
        yield
    finally:
        saved.restore()


def base_weights_of(model) -> dict[str, dict]:
    """Every slot's loaded (unedited) editable weights: slot name -> "<module>.weight" -> W.

    A model without slots (a bare encoder holder) gives its single ``base_fc2`` under ``text_encoder``."""
    slots = getattr(model, "slots", None)
    if slots:
        return {s.name: dict(s.base_fc2 or {}) for s in slots}
    base = base_fc2_of(model)
    return {"text_encoder": base} if base else {}


@contextmanager
def slot_weights(model, per_slot: dict[str, dict] | None) -> Iterator[None]:
    """``fc2_weights`` for several encoder slots at once (slot name -> weights); every slot's previous
    weights come back exactly. A model without slots takes the ``text_encoder`` entry."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for name, weights in (per_slot or {}).items():
            target = model.slot(name) if getattr(model, "slots", None) else model
            stack.enter_context(fc2_weights(target, weights))
        yield
