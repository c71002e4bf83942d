"""One request, one edit, every encoder slot.

``compute_model_edit`` runs ``compute_edit`` once per selected slot (each with its own layer, subject
index, second moment, k*, v* and early stop) and joins the rank-one updates into one EditDelta whose
updates carry ``component = slot name``. ``insert_model_edit`` applies it and checks W k_e == v* per
slot, restoring every slot when one check fails. A single-encoder model is the one-slot case.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from engine.covariance import SecondMomentStore
from engine.delta import EditDelta, WeightSnapshot
from engine.errors import EngineError, TokenizationError
from engine.events import ProgressCallback, StepCallback, StepEvent, StopCheck
from engine.methods.base import PreserveRequests
from engine.methods.outcome import EditTimings
from engine.methods.refact import edit
from engine.methods.refact.edit import EditResult
from engine.methods.refact.hparams import HParamsError, ReFACTHParams
from engine.methods.refact.insert import ZERO_UPDATE, check_inserted
from engine.request import EditRequest
from engine.slots import check_slot_layer, default_layer_for

SlotStepCallback = Callable[[str, StepEvent], None]


def preserve_for(preserve: PreserveRequests, slot: str) -> Sequence[EditRequest]:
    """The earlier requests slot ``slot`` protects: its entry of a mapping (none if absent), else all."""
    if isinstance(preserve, Mapping):
        return tuple(preserve.get(slot, ()))
    return tuple(preserve)


class SlotSelectionError(HParamsError):
    """--slots or --layer SLOT=N names a slot the model does not have."""


@dataclass
class SlotEdit:
    """The sub-edit of one slot: its layer, its result, and its weights hash once applied."""

    slot: str
    layer: int
    result: EditResult
    weights_hash: str = ""

    @property
    def delta(self) -> EditDelta:
        return self.result.delta


@dataclass
class ModelEditResult:
    """Every slot's sub-edit and the one delta holding all of them (in slot order)."""

    edits: list[SlotEdit]
    delta: EditDelta
    timings: EditTimings = field(default_factory=EditTimings)

    def slot(self, name: str) -> SlotEdit:
        for e in self.edits:
            if e.slot == name:
                return e
        raise KeyError(name)

    @property
    def primary(self) -> EditResult:
        """The first slot's result (the only one for SD1): its steps are the edit's step rows."""
        return self.edits[0].result

    # aggregate views used where one number per edit is stored
    @property
    def p_target(self) -> float:
        """The lowest P(target) over the slots (an edit is as good as its weakest slot)."""
        return min(e.result.p_target for e in self.edits)

    @property
    def steps_run(self) -> int:
        return max(e.result.steps_run for e in self.edits)

    @property
    def early_stopped(self) -> bool:
        return all(e.result.early_stopped for e in self.edits)

    @property
    def division_factor(self) -> float:
        return min((e.result.division_factor for e in self.edits), key=abs)

    @property
    def delta_norm(self) -> float:
        return self.primary.delta_norm

    @property
    def steps(self) -> list[StepEvent]:
        return self.primary.steps

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self.primary.tensors

    @property
    def layer(self) -> int:
        return self.edits[0].layer

    @property
    def module(self) -> str:
        return self.primary.delta.module

    @property
    def verify_error(self) -> float | None:
        errors = [e.result.verify_error for e in self.edits if e.result.verify_error is not None]
        return max(errors) if errors else None


def slot_list(model: Any) -> list[Any]:
    """The model's slots; a single-encoder stand-in (no ``.slots``) is its own one slot."""
    slots = getattr(model, "slots", None)
    return list(slots) if slots else [model]


def slot_name(slot: Any) -> str:
    return str(getattr(slot, "component", getattr(slot, "name", "text_encoder")))


def _default_layer(slot: Any) -> int:
    own = getattr(slot, "default_layer", None)
    return own() if callable(own) else default_layer_for(slot.adapter)


def plan_slots(model: Any, hparams: ReFACTHParams) -> list[tuple[Any, int]]:
    """(slot, layer) for every slot the edit touches, in slot order; one-line errors for bad names/layers."""
    slots = slot_list(model)
    names = [slot_name(s) for s in slots]
    for wanted in (*hparams.slots, *(k for k, _ in hparams.slot_layers)):
        if wanted not in names:
            raise SlotSelectionError(f"this model has no encoder slot {wanted!r}; its slots are {', '.join(names)}")
    chosen = [s for s in slots if not hparams.slots or slot_name(s) in hparams.slots]
    plan = []
    for slot in chosen:
        name = slot_name(slot)
        layer = hparams.layer_for(name)
        if layer is None:
            layer = hparams.layer if slot is slots[0] else _default_layer(slot)
        check_slot_layer(slot.adapter, layer, name)
        plan.append((slot, layer))
    return plan


def compute_model_edit(
    model: Any,
    request: EditRequest,
    hparams: ReFACTHParams,
    *,
    moments: SecondMomentStore | None = None,
    second_moments: dict[str, torch.Tensor] | None = None,
    corpus: Path | None = None,
    n_samples: int | None = None,
    progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
    on_slot_step: SlotStepCallback | None = None,
    should_stop: StopCheck | None = None,
    preserve_requests: PreserveRequests = (),
) -> ModelEditResult:
    """The edit of every planned slot (never modifies weights); see the module docstring.

    ``on_step`` gets the first slot's steps, ``on_slot_step`` every slot's (with the slot name).
    ``preserve_requests``: a mapping slot -> earlier requests edited at that slot's layer (each slot
    protects its own), or one sequence given to every slot.
    Errors name the slot they come from. Each slot runs ``edit.compute_edit``, looked up when called
    (tests replace it there).
    """
    t0 = time.perf_counter()
    plan = plan_slots(model, hparams)
    many = len(slot_list(model)) > 1  # errors name the slot when there is more than one
    edits: list[SlotEdit] = []
    for i, (slot, layer) in enumerate(plan):
        name = slot_name(slot)

        def step_cb(ev: StepEvent, _name: str = name, _first: bool = i == 0) -> None:
            if _first and on_step is not None:
                on_step(ev)
            if on_slot_step is not None:
                on_slot_step(_name, ev)

        try:
            result = edit.compute_edit(
                slot, request, replace(hparams, layer=layer, slots=(), slot_layers=()),
                second_moment=(second_moments or {}).get(name), moments=moments, corpus=corpus, n_samples=n_samples,
                progress=progress, on_step=step_cb, should_stop=should_stop,
                preserve_requests=preserve_for(preserve_requests, name),
            )
        except TokenizationError as exc:
            if not many:
                raise
            raise TokenizationError(f"{name}: {exc}") from None
        edits.append(SlotEdit(slot=name, layer=layer, result=result))
    delta = join_deltas(edits)
    timings = EditTimings(**{k: sum(getattr(e.result.timings, k) for e in edits) for k in vars(EditTimings())})
    timings.total_s = time.perf_counter() - t0
    return ModelEditResult(edits=edits, delta=delta, timings=timings)


def join_deltas(edits: Sequence[SlotEdit]) -> EditDelta:
    """One EditDelta with every slot's update; meta: the first slot's keys plus ``slots`` (per-slot meta)."""
    updates = [u for e in edits for u in e.delta.updates]
    meta = dict(edits[0].delta.meta)
    meta["slots"] = json.dumps({e.slot: e.delta.meta for e in edits}, sort_keys=True)
    return EditDelta(updates=updates, meta=meta)


def verify_model_edit(model: Any, result: ModelEditResult) -> float:
    """With ``result.delta`` applied: W k_e == v* per slot (an error names its slot on a multi-slot
    model); records each slot's verify error and weights hash. Returns the largest relative error."""
    slots = {slot_name(s): s for s in slot_list(model)}
    for e in result.edits:
        slot = slots[e.slot]
        try:
            e.result.verify_error = check_inserted(slot.adapter.fc2(e.layer), e.result.tensors["k_e"],
                                                   e.result.tensors["v_star"])
        except EngineError as exc:
            if len(slots) == 1:
                raise
            raise type(exc)(f"{e.slot}: {exc}") from None
        e.weights_hash = slot.encoder_hash() if hasattr(slot, "encoder_hash") else ""
    return result.verify_error or 0.0


def insert_model_edit(model: Any, result: ModelEditResult) -> float:
    """Apply every slot's update and check W k_e == v* per slot; on any failure every slot is
    restored bit-exactly and the error (naming the slot) is raised. Returns the largest relative error."""
    snapshot = WeightSnapshot.of(model, result.delta)
    result.delta.apply(model)
    try:
        snapshot.require_changed(ZERO_UPDATE)
        return verify_model_edit(model, result)
    except BaseException:
        snapshot.restore()
        raise


def apply_model_edit(model: Any, request: EditRequest, hparams: ReFACTHParams, **kwargs: Any) -> ModelEditResult:
    """``compute_model_edit`` + ``insert_model_edit``."""
    result = compute_model_edit(model, request, hparams, **kwargs)
    t0 = time.perf_counter()
    insert_model_edit(model, result)
    result.timings.insert_s += time.perf_counter() - t0
    result.timings.total_s += time.perf_counter() - t0
    return result
