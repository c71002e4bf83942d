"""Text-space metrics of edits, per encoder slot: after every edit (the worker) and on demand
(`refact eval`), written to the store as they complete.

Each edited slot is measured against that slot's own frozen base features (its readout, its
tokenizer). A model with one slot stores only the whole-edit rows (slot ''), exactly as before slots
existed. A model with several slots stores each edited slot's rows under the slot's name, and the
whole-edit rows are the mean over the edited slots of each metric (``retention`` likewise: the
per-slot retention of the head is the mean over the earlier edits that touched that slot).

A batch edit is measured request by request: its rows are the mean over its requests (n = the number
of requests), the aggregate the batch worker records, and the report lists each request's values.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

from engine.base_weights import base_fc2_of
from engine.evaluation.config import TextEvalConfig
from engine.evaluation.scoring import EditScores
from engine.evaluation.text_metrics import FeatureCache, TextMetrics, metrics_of_scores, text_scores
from engine.events import Progress, ProgressCallback
from refact_tui.services.eval_common import (
    EvalSummary,
    Kept,
    StoreSink,
    eval_targets,
    fail_run,
    is_main_process,
    record_retention,
    run_config,
)

# Frozen (base-encoder) features per loaded text encoder, so the worker encodes each text once.
_FROZEN: "weakref.WeakKeyDictionary[Any, FeatureCache]" = weakref.WeakKeyDictionary()


def frozen_features(model) -> FeatureCache:
    """The base encoder's features of ``model`` or of one encoder slot of it (its fc2 swapped to its
    ``base_fc2`` while encoding); cached per text encoder."""
    cache = _FROZEN.get(model.text_encoder)
    if cache is None:
        cache = FeatureCache.frozen(model, base_fc2_of(model))
        _FROZEN[model.text_encoder] = cache
    return cache


def _slots_of(model) -> list:
    slots = getattr(model, "slots", None)
    return list(slots) if slots else [model]


def _slot_name(slot) -> str:
    return str(getattr(slot, "name", "text_encoder"))


def edited_slots(model, names: Sequence[str]) -> list[tuple[str, Any]]:
    """(name, slot) of the model's slots named in ``names`` (an edit's edit_slots rows), in model
    order; the first slot when none is named (edits stored before slots, batches, TIME/UCE)."""
    slots = _slots_of(model)
    chosen = [(_slot_name(s), s) for s in slots if _slot_name(s) in set(names)]
    return chosen or [(_slot_name(slots[0]), slots[0])]


def slot_names_of(db, edit) -> list[str]:
    """The encoder slots an edit row changed (from edit_slots; [] when it has no slot rows)."""
    from store.edit_slots import edit_slots

    return [r.slot for r in edit_slots(db, edit.id)]


def similarity_of(edit, config: TextEvalConfig) -> tuple[str, float]:
    """(similarity, temperature) of the text comparison: the config's, else the edit's hparams."""
    return (config.similarity or edit.hparams.similarity,
            config.temperature if config.temperature is not None else edit.hparams.temperature)


@dataclass(frozen=True)
class SlotTextMetrics:
    """Text metrics of one edit on each edited encoder slot (in model order) and whether the model
    has several slots (then the per-slot values are stored too)."""

    per_slot: dict[str, TextMetrics]
    multi: bool
    scores: dict[str, EditScores] = field(default_factory=dict)  # what per_slot was computed from

    def headline(self) -> dict[str, float]:
        """The whole-edit values: the mean over the slots of each metric they all have."""
        values = [tm.values() for tm in self.per_slot.values()]
        names = [k for k in values[0] if all(k in v for v in values)]
        return {k: sum(v[k] for v in values) / len(values) for k in names}

    @property
    def n_items(self) -> int:
        tm = next(iter(self.per_slot.values()))
        return 1 + tm.n_positives + tm.n_negatives


def measure_slots(model, request, slots: Sequence[tuple[str, Any]], similarity: str,
                  temperature: float) -> SlotTextMetrics:
    """``text_metrics`` of ``request`` on each slot, against that slot's frozen base features."""
    scores = {name: text_scores(slot, frozen_features(slot), request, similarity=similarity, temperature=temperature)
              for name, slot in slots}
    per = {name: metrics_of_scores(s, request) for name, s in scores.items()}
    return SlotTextMetrics(per, len(_slots_of(model)) > 1, scores)


@dataclass(frozen=True)
class EditTextMetrics:
    """Text metrics of every request of one edit: a single edit has one, a batch edit one per request
    in batch order. The edit's values are the mean over its requests (std: population std over the
    requests; n: the number of requests of a batch, the scored items of a single edit), which is the
    aggregate the batch worker records."""

    requests: list[SlotTextMetrics]

    @property
    def multi(self) -> bool:
        return self.requests[0].multi

    @property
    def slots(self) -> list[str]:
        return list(self.requests[0].per_slot)

    @property
    def n(self) -> int:
        return self.requests[0].n_items if len(self.requests) == 1 else len(self.requests)

    def _rows(self, slot: str | None) -> list[dict[str, float]]:
        return [r.headline() if slot is None else r.per_slot[slot].values() for r in self.requests]

    def values(self, slot: str | None = None) -> dict[str, tuple[float, float | None]]:
        """name -> (mean, std) over the requests (``slot`` None: the whole-edit values); std is None
        for a single request."""
        rows = self._rows(slot)
        names = [k for k in rows[0] if all(k in r for r in rows)]
        out = {}
        for k in names:
            vals = [float(r[k]) for r in rows]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) if len(vals) > 1 else None
            out[k] = (mean, std)
        return out

    def per_request(self) -> list[dict[str, float]]:
        """Each request's whole-edit values, in batch order."""
        return self._rows(None)

    def scores(self) -> dict[str, list[EditScores]]:
        """slot -> the probability pairs of every request (what the history aggregates pool)."""
        out: dict[str, list[EditScores]] = {}
        for r in self.requests:
            for name, s in r.scores.items():
                out.setdefault(name, []).append(s)
        return out

    def kept(self, slot: str | None = None) -> Kept:
        """Efficacy / generality as retention values: the means over the requests."""
        v = self.values(slot)
        tms = [r.per_slot[slot] if slot is not None else next(iter(r.per_slot.values())) for r in self.requests]
        gen = v.get("generality")
        return Kept(v["efficacy"][0], len(self.requests), gen[0] if gen else None, sum(t.n_positives for t in tms))


def record_slot_metrics(sink: StoreSink, edit_id: int, etm: EditTextMetrics) -> None:
    """The whole-edit rows, and each slot's rows when the model has several slots."""
    n = etm.n
    if etm.multi:
        for slot in etm.slots:
            for name, (value, std) in etm.values(slot).items():
                sink.metric(edit_id, name, value, std, n, n, True, slot)
    for name, (value, std) in etm.values().items():
        sink.metric(edit_id, name, value, std, n, n, True)
    if len(etm.requests) > 1:
        sink.summary.request_metrics[edit_id] = etm.per_request()


def _record_slot_retention(sink: StoreSink, edits: Sequence, measured: dict[int, EditTextMetrics]) -> None:
    """Whole-edit retention rows, then per slot over the edits that touched the slot."""
    record_retention(sink, edits, {e.id: measured[e.id].kept() for e in edits})
    head = measured[edits[-1].id]
    if not head.multi:
        return
    for slot in head.slots:
        mine = [e for e in edits[:-1] if slot in measured[e.id].slots]
        if mine:
            record_retention(sink, [*mine, edits[-1]], {e.id: measured[e.id].kept(slot) for e in mine}, slot)


def requests_of(db, edit) -> list:
    """The requests an edit applied: every request of a batch edit (batch order), else its own."""
    from store.batches import requests_of_edits

    return requests_of_edits(db, [edit])


def _edit_metrics(ws, model, edit, config: TextEvalConfig) -> EditTextMetrics:
    sim, temp = similarity_of(edit, config)
    slots = edited_slots(model, slot_names_of(ws.db, edit))
    return EditTextMetrics([measure_slots(model, r, slots, sim, temp) for r in requests_of(ws.db, edit)])


def record_text_metrics(ws, model, edit_row, config: TextEvalConfig = TextEvalConfig()) -> EvalSummary:
    """Called by the worker after every edit: text metrics of ``edit_row`` at the new head (per slot),
    and the retention of every earlier applied edit of its history at that head."""
    from store.edits import applied_edits
    from store.metrics import finish_eval_run, start_eval_run

    earlier = [e for e in applied_edits(ws.db, edit_row.history_id, edit_row.seq) if e.seq < edit_row.seq]
    run = start_eval_run(ws.db, edit_row.history_id, edit_row.seq, "text", {
        "trigger": "after_edit", "edit_id": edit_row.id, "similarity": similarity_of(edit_row, config)[0],
        "history_id": edit_row.history_id, "head_seq": edit_row.seq, "retention_of": [e.id for e in earlier],
    })
    summary = EvalSummary(eval_run_ids=[run.id])
    sink = StoreSink(ws, run.id, "text", summary)
    try:
        measured = {edit_row.id: _edit_metrics(ws, model, edit_row, config)}
        record_slot_metrics(sink, edit_row.id, measured[edit_row.id])
        if earlier:
            for e in earlier:
                measured[e.id] = _edit_metrics(ws, model, e, config)
            _record_slot_retention(sink, [*earlier, edit_row], measured)
    except Exception as exc:
        fail_run(run.id, ws, exc)
        raise
    finish_eval_run(ws.db, run.id, "done")
    return summary


def _history_rows(sink: StoreSink, scores: dict[str, list], k: int, total: int, multi: bool) -> None:
    """Whole-history aggregates (edit_id NULL) after ``k`` of ``total`` edits: per slot when the model
    has several, the headline then being the mean over the slots of each aggregate."""
    from engine.evaluation.scoring import summarize

    final = k == total
    if not multi:
        for m in summarize(next(iter(scores.values()))).values():
            sink.metric(None, m.name, m.value, m.std, k, total, final)
        return
    per = {slot: summarize(rows) for slot, rows in scores.items() if rows}
    for slot, ms in per.items():
        for m in ms.values():
            sink.metric(None, m.name, m.value, m.std, k, total, final, slot)
    names = [n for n in next(iter(per.values())) if all(n in ms for ms in per.values())]
    for n in names:
        vals = [ms[n].value for ms in per.values()]
        if all(math.isfinite(v) for v in vals):
            sink.metric(None, n, sum(vals) / len(vals), None, k, total, final)


def run_text_eval(ws, edit_id: int | None = None, history: bool = False, on_progress: ProgressCallback | None = None,
                  config: TextEvalConfig = TextEvalConfig(), device: str = "auto") -> EvalSummary:
    """Text-space metrics of one edit (default: the head edit) or of every applied edit, at the head,
    per encoder slot; ``history`` also stores the retention metrics. Text space takes seconds, so
    under accelerate only the main process computes it (the others return an empty summary)."""
    from refact_tui.services.working_model import load_history_model
    from store.metrics import finish_eval_run, start_eval_run

    hist, edits = eval_targets(ws, edit_id, history)
    if not is_main_process():
        return EvalSummary()
    model = load_history_model(ws, hist.id, device=device).model
    run = start_eval_run(ws.db, hist.id, hist.head_seq, "text",
                         {**run_config(hist, edits, history), "config": config.to_dict()})
    summary = EvalSummary(eval_run_ids=[run.id])
    sink = StoreSink(ws, run.id, "text", summary)
    multi = len(_slots_of(model)) > 1
    try:
        scores: dict[str, list] = {}
        measured: dict[int, EditTextMetrics] = {}
        for k, e in enumerate(edits, 1):
            measured[e.id] = _edit_metrics(ws, model, e, config)
            for name, rows in measured[e.id].scores().items():  # the same scores, encoded once
                scores.setdefault(name, []).extend(rows)
            record_slot_metrics(sink, e.id, measured[e.id])
            if len(edits) > 1:
                _history_rows(sink, scores, k, len(edits), multi)
            if on_progress is not None:
                on_progress(Progress("text-eval", k, len(edits), f"edit {e.seq}"))
        if history and len(edits) > 1:
            _record_slot_retention(sink, edits, measured)
    except Exception as exc:
        fail_run(run.id, ws, exc)
        raise
    finish_eval_run(ws.db, run.id, "done")
    return summary
