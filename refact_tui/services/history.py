"""History use-cases: list / show edits, rollback, replay, fork, checkout.

A history's model is always its base plus its own applied deltas 1..head, so forks and replays copy
edit rows (pointing at the same delta files) instead of referring back to their parent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.errors import DeltaIntegrityError, EngineError
from engine.methods.refact.hparams import HParamsError, ReFACTHParams


@dataclass(frozen=True)
class CurveSummary:
    """The loss curve of one edit in a few numbers."""

    steps: int
    first_loss: float | None
    last_loss: float | None
    min_loss: float | None
    p_target_start: float | None
    p_target_end: float | None


@dataclass
class EditDetail:
    """Everything `refact show` prints about one edit."""

    edit: Any                               # EditRow
    history_name: str
    steps: list = field(default_factory=list)       # StepRow
    curve: CurveSummary | None = None
    metrics: list = field(default_factory=list)     # MetricRow (latest per name)
    artifacts: list = field(default_factory=list)   # ArtifactRow
    slots: list = field(default_factory=list)       # EditSlotRow per edited encoder slot (store.edit_slots)
    # multi-slot edits: each slot's latest metrics (MetricRow) and loss-curve summary, slot -> value
    slot_metrics: dict = field(default_factory=dict)
    slot_curves: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HeadMove:
    """A move of a history's head; weights_hash is the rebuilt model's hash (verified)."""

    history: Any                            # HistoryRow after the move
    from_seq: int
    to_seq: int
    weights_hash: str | None


@dataclass(frozen=True)
class RollbackResult(HeadMove):
    """A rollback: how many edits it marked rolled back."""

    rolled_back: int


@dataclass(frozen=True)
class HistoryInfo:
    """A history with its counts, for `refact histories`."""

    history: Any                            # HistoryRow
    current: bool
    applied: int
    rolled_back: int
    queued: int
    base_source: str


def _current(ws):
    from store.histories import current_history

    return current_history(ws.db)


def _history(ws, history: int | str | None):
    from refact_tui.services.working_model import resolve_history

    return resolve_history(ws, history)


def list_history(ws, history: int | str | None = None) -> list:
    """Every edit of a history (current by default) in seq order, rolled-back ones included."""
    from store.edits import list_edits

    return list_edits(ws.db, _history(ws, history).id, include_rolled_back=True)


def list_all_histories(ws) -> list[HistoryInfo]:
    """All histories with edit and queue counts, marking the current one."""
    from store.base_models import get_base_model
    from store.histories import list_histories
    from store.reads import HistoryCounts, history_counts
    from store.states import EditStatus

    current_id = _current(ws).id
    counts = history_counts(ws.db)
    out = []
    for h in list_histories(ws.db):
        base = get_base_model(ws.db, h.base_model_id)
        c = counts.get(h.id, HistoryCounts({}, 0))
        out.append(HistoryInfo(h, h.id == current_id, c.edits.get(EditStatus.APPLIED, 0),
                               c.edits.get(EditStatus.ROLLED_BACK, 0), c.queued, base.source))
    return out


def checkout(ws, name: int | str):
    """Make a history (by name or id) the current one."""
    from store.histories import get_history, set_current_history

    return set_current_history(ws.db, get_history(ws.db, name).id)


def summarize_curve(steps: list) -> CurveSummary | None:
    """First / last / min loss and P(target) start / end of a list of StepRows."""
    if not steps:
        return None
    steps = sorted(steps, key=lambda s: s.step)
    losses = [s.loss for s in steps if s.loss is not None and math.isfinite(s.loss)]
    return CurveSummary(
        steps=len(steps),
        first_loss=steps[0].loss,
        last_loss=steps[-1].loss,
        min_loss=min(losses) if losses else None,
        p_target_start=steps[0].p_target,
        p_target_end=steps[-1].p_target,
    )


def edit_detail(ws, edit_id: int) -> EditDetail:
    """An edit with its step rows, loss-curve summary, latest metrics and artifacts."""
    from store.artifacts import list_artifacts
    from store.edit_slots import edit_slots
    from store.edits import get_edit
    from store.histories import get_history
    from store.metrics import latest_metrics, slot_metrics
    from store.steps import slot_steps_for_edit, steps_for_edit

    edit = get_edit(ws.db, edit_id)
    steps = steps_for_edit(ws.db, edit.id)
    by_slot = slot_steps_for_edit(ws.db, edit.id)
    return EditDetail(
        edit=edit,
        history_name=get_history(ws.db, edit.history_id).name,
        steps=steps,
        curve=summarize_curve(steps),
        metrics=latest_metrics(ws.db, edit_id=edit.id),
        artifacts=list_artifacts(ws.db, "edit", edit.id),
        slots=edit_slots(ws.db, edit.id),
        slot_metrics=slot_metrics(ws.db, edit.id),
        slot_curves={k: summarize_curve(v) for k, v in by_slot.items()} if len(by_slot) > 1 else {},
    )


def rollback(ws, seq: int, history: int | str | None = None, verify: bool = True) -> RollbackResult:
    """Move the head back to edit `seq` (0 = the base model); later edits become rolled_back.

    With verify, the model is rebuilt from base + deltas 1..seq and its hash must equal the one
    recorded when edit `seq` was first applied (DeltaIntegrityError otherwise, nothing changed).
    """
    from store.db import transaction
    from store.edits import applied_edits, mark_rolled_back_after

    hist = _history(ws, history)
    if seq < 0:
        raise EngineError(f"cannot roll back to {seq}; use 0 for the base model or an edit's seq")
    if seq > hist.head_seq:
        from store.edits import list_edits

        kept = {e.seq for e in list_edits(ws.db, hist.id) if e.status == "rolled_back"}
        hint = (f"; restore it with `refact rollforward {seq}`" if seq in kept else
                "; `refact history` lists the edits")
        raise EngineError(f"edit {seq} is after the head ({hist.head_seq}) of {hist.name!r}; rollback only goes "
                          f"back: pick 0..{hist.head_seq} (0 = the base model){hint}")
    if seq > 0 and seq not in {e.seq for e in applied_edits(ws.db, hist.id, hist.head_seq)}:
        raise EngineError(f"edit {seq} of {hist.name!r} is not applied (rolled back earlier); pick a seq shown "
                          "as applied by `refact history`")
    weights_hash = None
    if verify:
        from refact_tui.services.working_model import load_history_model

        # rebuild (and verify) before changing anything, so a damaged delta leaves the history as it was
        weights_hash = load_history_model(ws, hist.id, "cpu", upto_seq=seq).weights_hash
    from store.events import log_event
    from store.histories import get_history

    with transaction(ws.db):
        # the head as it is now: a worker may have committed an edit while the model was rebuilt
        start = get_history(ws.db, hist.id).head_seq
        n = mark_rolled_back_after(ws.db, hist.id, seq)
    log_event(ws.db, "cli", f"history {hist.name!r} rolled back from {start} to {seq} ({n} edit(s))")
    return RollbackResult(get_history(ws.db, hist.id), start, seq, weights_hash, rolled_back=n)


def _unique_name(ws, wanted: str | None, stem: str) -> str:
    from store.histories import list_histories

    if wanted:
        return wanted
    names = {h.name for h in list_histories(ws.db)}
    i = 1
    while f"{stem}-{i}" in names:
        i += 1
    return f"{stem}-{i}"


def _copy_edit(ws, history_id: int, e, weights_hash: str | None):
    from store.edits import record_edit

    copy = record_edit(
        ws.db, history_id=history_id, job_id=None, request=e.request, hparams=e.hparams, status="applied",
        layer=e.layer, module=e.module, delta_path=e.delta_path, delta_sha256=e.delta_sha256,
        weights_hash=weights_hash, steps_run=e.steps_run, early_stopped=e.early_stopped, p_target=e.p_target,
        delta_norm=e.delta_norm, division_factor=e.division_factor, timings=e.timings, device=e.device,
        source_edit_id=e.id, method=e.method, method_hparams=e.method_hparams,
    )
    if getattr(e, "kind", "edit") == "batch":  # a batch stays a batch: kind and its per-request rows
        from store.batches import copy_batch

        copy_batch(ws.db, e.id, copy.id)
    from store.edit_slots import copy_edit_slots

    copy_edit_slots(ws.db, e.id, copy.id, keep_hashes=weights_hash == e.weights_hash)
    return copy


def _requests_of(ws, e) -> list:
    """The requests an edit applied: its own, or every request of a batch edit."""
    if getattr(e, "kind", "edit") != "batch":
        return [e.request]
    from store.batches import batch_requests

    return [r.request for r in batch_requests(ws.db, e.id)]


def fork(ws, at_seq: int, name: str, history: int | str | None = None):
    """A new current history sharing the parent's applied edits 1..at_seq (delta files are shared)."""
    from store.db import transaction
    from store.edits import applied_edits
    from store.histories import create_history, get_history, set_current_history

    src = _history(ws, history)
    if not 0 <= at_seq <= src.head_seq:
        raise EngineError(f"cannot fork {src.name!r} at {at_seq}: pick 0..{src.head_seq} (its head)")
    edits = applied_edits(ws.db, src.id, at_seq)
    if at_seq > 0 and (not edits or edits[-1].seq != at_seq):
        raise EngineError(f"edit {at_seq} of {src.name!r} is not applied; fork at an applied edit")
    with transaction(ws.db):
        new = create_history(ws.db, src.base_model_id, name, parent_id=src.id, forked_at_seq=at_seq)
        for e in edits:
            _copy_edit(ws, new.id, e, e.weights_hash)
        set_current_history(ws.db, new.id)
    return get_history(ws.db, new.id)


def _register_model(ws, model: str | Path, dtype: str | None = None):
    """Load a model (encoder only, in ``dtype``) and register it as a base model of the workspace, with the
    same description `refact init` records (layer count included, so queue checks work on it)."""
    from engine.models import load_model
    from refact_tui.services.workspace import describe_loaded, register_model

    loaded = load_model(model, device="cpu", with_pipeline=False, dtype=dtype)
    return register_model(ws.db, describe_loaded(loaded, model)), loaded


def replay(ws, *, model: str | Path | None = None, force: bool = False, reoptimize: bool = False,
           hparams: ReFACTHParams | Mapping[str, Any] | None = None, name: str | None = None,
           history: int | str | None = None):
    """Re-apply the current history's applied deltas as a NEW current history.

    Onto its own base (default) or another model (`model`; a different text-encoder hash is refused
    unless `force`). With `reoptimize`, the stored requests are queued as new jobs in a forked
    history instead (hparams: a full ReFACTHParams, or a mapping of overrides of each stored one).
    """
    from refact_tui.services.working_model import load_deltas, model_weights_hash
    from store.base_models import get_base_model
    from store.db import transaction
    from store.edits import applied_edits
    from store.histories import create_history, get_history, set_current_history
    from store.jobs import enqueue

    src = _history(ws, history)
    src_base = get_base_model(ws.db, src.base_model_id)
    edits = applied_edits(ws.db, src.id, src.head_seq)
    loaded = None
    if model is None:
        base = src_base
    else:
        from refact_tui.services.working_model import hash_dtype

        base, loaded = _register_model(ws, model, hash_dtype(src_base.encoder_hash))  # hashes that compare
    if hparams and not reoptimize:
        raise HParamsError("hyperparameter overrides only apply with --reoptimize (stored deltas are re-applied as is)")
    if reoptimize:
        with transaction(ws.db):
            new = create_history(ws.db, base.id, _unique_name(ws, name, f"{src.name}-reopt"), parent_id=src.id,
                                 forked_at_seq=0)
            for e in edits:
                for request in _requests_of(ws, e):  # a batch edit queues each of its requests
                    enqueue(ws.db, new.id, request, e.hparams.resolve(hparams), method=e.method,
                            method_hparams=e.method_hparams)
            set_current_history(ws.db, new.id)
        return get_history(ws.db, new.id)

    if base.encoder_hash != src_base.encoder_hash and not force:
        raise DeltaIntegrityError(
            f"{model} has a different text encoder than the base of {src.name!r} "
            f"({base.encoder_hash[:12]} vs {src_base.encoder_hash[:12]}); pass --force to apply the deltas anyway"
        )
    deltas = load_deltas(ws, edits)
    from refact_tui.services.working_model import apply_delta, ensure_pipeline, needs_pipeline

    if loaded is None:
        from engine.models import load_model

        loaded = load_model(base.path, device="cpu", with_pipeline=needs_pipeline(deltas))
    elif needs_pipeline(deltas):  # TIME / UCE deltas edit the UNet of the other model's pipeline
        ensure_pipeline(loaded)
    hashes = []
    for e, d in zip(edits, deltas):
        apply_delta(loaded, d)  # DeltaIntegrityError if the shapes do not fit this model
        hashes.append(model_weights_hash(loaded))
        if model is not None and not force:
            _check_same_step(model, src.name, e, d, hashes[-1])
    with transaction(ws.db):
        new = create_history(ws.db, base.id, _unique_name(ws, name, f"{src.name}-replay"), parent_id=src.id,
                             forked_at_seq=None)
        for e, h in zip(edits, hashes):
            _copy_edit(ws, new.id, e, h)
        set_current_history(ws.db, new.id)
    return get_history(ws.db, new.id)


def _check_same_step(model, source: str, edit, delta, weights_hash: str) -> None:
    """Onto another model, every delta must give the weights recorded when its edit was made: the
    recorded hash covers every component a history's deltas touch (the text encoders and the edited
    UNet matrices), so a base that differs only in its UNet is caught at the first TIME / UCE delta."""
    from refact_tui.services.working_model import hash_dtype

    # a hash recorded in another dtype cannot be compared (services/working_model.py)
    comparable = hash_dtype(edit.weights_hash) == hash_dtype(weights_hash)
    if edit.weights_hash and comparable and weights_hash != edit.weights_hash:
        parts = ", ".join(sorted({u.component for u in delta.updates}))
        raise DeltaIntegrityError(
            f"{model} differs from the base of {source!r} in what edit {edit.seq} changes ({parts}): the weights "
            f"after its delta are {weights_hash[:12]}, not the recorded {edit.weights_hash[:12]}; pass --force to "
            "apply the deltas anyway")


@dataclass(frozen=True)
class RollforwardResult(HeadMove):
    """A rollforward: how many rolled-back edits it re-applied (the hash equals the recorded one)."""

    restored: int


def rollforward(ws, seq: int | None = None, history: int | str | None = None) -> RollforwardResult:
    """Undo a rollback: move the head forward to kept edit `seq` (default: the last rolled-back one),
    re-applying the rolled-back edits after the head in order.

    The model is rebuilt from base + the applied deltas + the restored ones, and must equal, bit for bit,
    the weights hash recorded when edit `seq` was first applied (DeltaIntegrityError otherwise, e.g. when
    the restored edits were made on another line of edits; nothing changes then).
    """
    from engine.models import load_model
    from refact_tui.services.working_model import (
        apply_delta,
        hash_dtype,
        load_deltas,
        model_weights_hash,
        needs_pipeline,
        recorded_hash_matches,
    )
    from store.base_models import get_base_model
    from store.db import transaction
    from store.edits import list_edits, mark_rolled_forward
    from store.events import log_event
    from store.histories import get_history

    hist = _history(ws, history)
    edits = list_edits(ws.db, hist.id, include_rolled_back=True)
    kept = [e for e in edits if e.seq > hist.head_seq and e.status == "rolled_back"]
    if not kept:
        raise EngineError(f"nothing to roll forward: {hist.name!r} has no rolled-back edits after its head "
                          f"({hist.head_seq})")
    target = kept[-1].seq if seq is None else int(seq)
    if target <= hist.head_seq:
        raise EngineError(f"edit {target} is not after the head ({hist.head_seq}) of {hist.name!r}; use "
                          f"`refact rollback {target}` to go back")
    if target not in {e.seq for e in kept}:
        raise EngineError(f"edit {target} of {hist.name!r} is not a rolled-back edit after the head; pick one of "
                          f"{[e.seq for e in kept]}")
    chain = [e for e in edits if e.status == "applied" and e.seq <= hist.head_seq] + \
        [e for e in kept if e.seq <= target]
    want = next(e for e in kept if e.seq == target).weights_hash
    if not want:
        raise DeltaIntegrityError(f"edit {target} has no recorded weights hash; it cannot be verified")
    deltas = load_deltas(ws, chain)  # each file checked against its sha256
    base = get_base_model(ws.db, hist.base_model_id)
    # rebuilt in the dtype the hash was recorded in, so the two compare
    model = load_model(base.path, device="cpu", with_pipeline=needs_pipeline(deltas), dtype=hash_dtype(want))
    for d in deltas:
        apply_delta(model, d)
    got = model_weights_hash(model)
    if not recorded_hash_matches(model, want, got):
        raise DeltaIntegrityError(
            f"re-applying edits up to {target} of {hist.name!r} does not give the weights recorded for edit "
            f"{target}; those edits were made on another line of edits (pick an earlier seq, or use "
            "`refact replay --reoptimize`); nothing changed"
        )
    with transaction(ws.db):
        if get_history(ws.db, hist.id).head_seq != hist.head_seq:
            raise EngineError(f"the head of {hist.name!r} moved meanwhile; run the command again")
        n = mark_rolled_forward(ws.db, hist.id, hist.head_seq, target)
    log_event(ws.db, "cli", f"history {hist.name!r} rolled forward from {hist.head_seq} to {target} ({n} edit(s))")
    return RollforwardResult(get_history(ws.db, hist.id), hist.head_seq, target, got, restored=n)
