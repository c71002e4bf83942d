"""`refact layers`: edit one request at every editable layer of one slot, several, or every slot
(``--all-slots``: which encoder holds this concept) and measure each, in text space.

Each layer's edit is inserted into the in-memory working model, measured, and taken out again
(weights restored bit for bit), so nothing in the workspace changes except cached statistics. Per
layer: P(target) of the optimisation, text-space efficacy (the edit prompt's P(target) against the
frozen base's source/target features), generality / specificity when probes are given, and drift:
the mean relative change of the slot's readout over unrelated corpus captions. Rows name their slot
and layer; the sweep ranks them across every swept slot (one slot is the case of a one-slot sweep).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.errors import EngineError
from engine.request import EditRequest

DRIFT_CAPTIONS = 24


@dataclass
class LayerRow:
    """One layer's edit, measured."""

    slot: str
    layer: int
    p_target: float | None = None       # the optimisation's own P(target)
    efficacy: float | None = None       # text-space efficacy of the edit prompt
    generality: float | None = None
    specificity: float | None = None
    drift: float | None = None          # mean ||f' - f|| / ||f|| over unrelated captions
    steps_run: int = 0
    seconds: float = 0.0
    error: str | None = None            # why this layer could not be edited


@dataclass(frozen=True)
class SweptSlot:
    """One slot the sweep covered, and the readout its rows were measured on."""

    name: str
    readout: str


def rank_key(row: LayerRow) -> tuple[float, float]:
    """Higher is better: efficacy (to 3 decimals), then less drift. Drift is relative to each slot's own
    readout, so rows of different slots compare on the same scale."""
    return (round(row.efficacy or 0.0, 3), -(row.drift or 0.0))


@dataclass
class LayerSweep:
    """Every (slot, layer) edit of one request, measured, in slot then layer order."""

    slots: list[SweptSlot] = field(default_factory=list)
    rows: list[LayerRow] = field(default_factory=list)

    def rows_of(self, slot: str) -> list[LayerRow]:
        return [r for r in self.rows if r.slot == slot]

    def ranking(self) -> list[LayerRow]:
        """The measured rows of every swept slot, best first (``rank_key``)."""
        ok = [r for r in self.rows if r.error is None and r.efficacy is not None]
        return sorted(ok, key=rank_key, reverse=True)

    def rank_of(self, row: LayerRow) -> int | None:
        """1 for the best row across slots; None for a row that could not be measured."""
        for i, r in enumerate(self.ranking(), start=1):
            if r is row:
                return i
        return None

    @property
    def best(self) -> LayerRow | None:
        """The best (slot, layer) across every swept slot."""
        ranked = self.ranking()
        return ranked[0] if ranked else None

    def best_of(self, slot: str) -> LayerRow | None:
        """The best layer of one slot."""
        return next((r for r in self.ranking() if r.slot == slot), None)


def select_slots(names: Sequence[str], slots: Sequence[str] = (), all_slots: bool = False) -> list[str]:
    """The slots to sweep, in model order: ``slots`` when given, else every slot (``all_slots`` says so
    explicitly). One-line SlotSelectionError for an unknown name or both choices."""
    from engine.methods.refact.model_edit import SlotSelectionError

    if all_slots and slots:
        raise SlotSelectionError("give --slots or --all-slots, not both (--all-slots sweeps every encoder slot)")
    for wanted in slots:
        if wanted not in names:
            raise SlotSelectionError(f"this model has no encoder slot {wanted!r}; its slots are {', '.join(names)}")
    return [n for n in names if n in slots] if slots else list(names)


def drift_texts(request: EditRequest, n: int = DRIFT_CAPTIONS, corpus: Path | None = None) -> list[str]:
    """Corpus captions that do not mention the request's subject (the unrelated set drift is measured on)."""
    from engine.covariance import default_corpus_path, read_corpus

    subject = request.subject_text.lower()
    lines = read_corpus(corpus or default_corpus_path())
    return [ln for ln in lines if subject not in ln.lower()][:n]


def sweep_layers(
    model: Any,
    request: EditRequest,
    hparams: Any,
    *,
    slots: Sequence[str] = (),
    all_slots: bool = False,
    layers: Sequence[int] = (),
    moments: Any = None,
    corpus: Path | None = None,
    n_samples: int | None = None,
    unrelated: Sequence[str] | None = None,
    on_row: Callable[[LayerRow], None] | None = None,
) -> LayerSweep:
    """Edit ``request`` at every editable layer (or ``layers``) of the slots ``select_slots`` picks; see
    module doc."""
    from engine.covariance import SecondMomentStore
    from engine.evaluation.text_metrics import FeatureCache, encode_texts, text_metrics
    from engine.methods import get_method
    from engine.methods.base import EditContext
    from engine.methods.refact.model_edit import slot_list

    request.validate()
    every = slot_list(model)
    names = [getattr(s, "component", "text_encoder") for s in every]
    chosen = select_slots(names, slots, all_slots)
    moments = moments if moments is not None else SecondMomentStore(None)
    method = get_method("refact")
    context = EditContext(second_moments=moments, corpus=corpus, n_samples=n_samples)
    unrelated = list(unrelated) if unrelated is not None else drift_texts(request, corpus=None)
    out = LayerSweep()
    for slot, name in zip(every, names):
        if name not in chosen:
            continue
        swept = SweptSlot(name, slot.adapter.readout.spec())
        out.slots.append(swept)
        frozen = FeatureCache.frozen(slot, getattr(slot, "base_fc2", None))
        base_drift = encode_texts(slot, unrelated) if unrelated else None
        editable = range(0, slot.adapter.last_editable + 1)
        for layer in (layers or editable):
            row = LayerRow(slot=name, layer=int(layer))
            t0 = time.perf_counter()
            if layer not in editable:
                row.error = f"not editable (layers 0..{editable[-1]} reach the {swept.readout} readout)"
            else:
                undo = None
                try:
                    outcome = method.compute(slot, [request], _at(hparams, int(layer)), context)
                    undo = outcome.insert(slot)
                    m = text_metrics(slot, frozen, request, similarity=hparams.similarity,
                                     temperature=hparams.temperature)
                    row.p_target, row.efficacy, row.steps_run = outcome.p_target, m.efficacy, outcome.steps_run
                    row.generality, row.specificity = m.generality, m.specificity
                    if base_drift is not None:
                        now = encode_texts(slot, unrelated)
                        rel = (now - base_drift).norm(dim=-1) / base_drift.norm(dim=-1).clamp_min(1e-12)
                        row.drift = float(rel.mean())
                except (EngineError, ValueError) as exc:  # an engine refusal at one layer is a result, not a crash
                    row.error = " ".join(str(exc).split())
                finally:
                    if undo is not None:
                        undo()
            row.seconds = time.perf_counter() - t0
            out.rows.append(row)
            if on_row is not None:
                on_row(row)
    return out


def _at(hparams: Any, layer: int) -> Any:
    """``hparams`` for one slot at ``layer`` (the sweep picks the slot and the layer itself)."""
    return replace(hparams, layer=layer, slots=(), slot_layers=())


def sweep_workspace(ws, request: EditRequest, hparams: Any, *, slots: Sequence[str] = (), all_slots: bool = False,
                    layers: Sequence[int] = (), device: str = "auto",
                    on_row: Callable[[LayerRow], None] | None = None) -> LayerSweep:
    """``sweep_layers`` on the current history's model at its head (the workspace's statistics cache
    and corpus settings; nothing else is written)."""
    from engine.covariance import SecondMomentStore
    from refact_tui.services.queue import resolve_hparams
    from refact_tui.services.runner import STATS_CORPUS_KEY, STATS_SAMPLES_KEY
    from refact_tui.services.working_model import working_model
    from store.db import get_meta

    hp = resolve_hparams(ws, hparams)
    corpus = get_meta(ws.db, STATS_CORPUS_KEY) or None
    samples = get_meta(ws.db, STATS_SAMPLES_KEY) or None
    model = working_model(ws, device)
    return sweep_layers(model, request, hp, slots=slots, all_slots=all_slots, layers=layers,
                        moments=SecondMomentStore(Path(ws.stats_dir)),
                        corpus=Path(corpus) if corpus else None, n_samples=int(samples) if samples else None,
                        on_row=on_row)
