"""ReFACT behind the method contract: the driver that reads like the paper.

For one request, every planned encoder slot gets its own rank-one edit (``model_edit``): keys k*,
k_e and u = C^-1 k* (``keys``), v* by optimising the v* objective (``values`` on ``loss``), then
r = (v* - v_e) / (k_e . u) (``insert``); inserting checks W k_e == v* per slot. N requests at once
go into the first slot as one delta (``batch``: rank-one sum, joint solve or spread over layers),
their v* optimised together, vectorised. ``compute_each`` (the bench) gives one edit per request
over every slot, the v* of all requests vectorised slot by slot.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

import torch

from engine.methods.base import EditContext, EditMethod
from engine.methods.outcome import EditOutcome, EditTimings, RequestRow, SlotRow
from engine.methods.refact.batch import BatchInsertConfig, BatchInsertResult, compute_batch
from engine.methods.refact.edit import compute_values
from engine.methods.refact.hparams import HParamsError, ReFACTHParams, default_temperature
from engine.methods.refact.model_edit import (
    ModelEditResult,
    SlotEdit,
    compute_model_edit,
    join_deltas,
    plan_slots,
    preserve_for,
    slot_list,
    slot_name,
    verify_model_edit,
)
from engine.request import EditRequest


class ReFACTMethod(EditMethod):
    name = "refact"
    component = "text_encoder"
    vectorised = True

    def default_hparams(self, model: Any = None) -> ReFACTHParams:
        """The paper's defaults; on encoders with fewer than 8 layers, the middle layer; the encoder's
        default temperature (``default_temperature``)."""
        normalized = bool(getattr(getattr(model, "adapter", None), "normalized_features", False))
        h = ReFACTHParams(temperature=default_temperature(normalized))
        n = getattr(getattr(model, "adapter", None), "num_layers", None)
        if n is not None and h.layer >= n:
            h = h.with_overrides(layer=n // 2)
        return h

    def hparams_from_dict(self, data: Mapping[str, Any] | None, model: Any = None) -> ReFACTHParams:
        return ReFACTHParams.from_dict({**self.default_hparams(model).to_dict(), **dict(data or {})})

    def check_hparams(self, model: Any, hparams: ReFACTHParams) -> None:
        """Every slot and layer ``hparams`` plans exists on ``model`` (HParamsError, one line)."""
        plan_slots(model, hparams)

    def target_modules(self, model: Any, hparams: ReFACTHParams) -> dict[str, torch.nn.Module]:
        """Every fc2 of every encoder slot: an edit may touch any slot at any layer."""
        return {f"{slot_name(s)}:{k}": v for s in slot_list(model) for k, v in s.fc2_modules().items()}

    def compute(self, model: Any, requests: Sequence[EditRequest], hparams: ReFACTHParams,
                context: EditContext | None = None) -> EditOutcome:
        ctx = context or EditContext()
        requests = list(requests)
        if not requests:
            raise HParamsError("an edit needs at least one request")
        if len(requests) == 1 and ctx.insertion is None:
            return self._one(model, requests[0], hparams, ctx)
        return self._batch(model, requests, hparams, ctx, ctx.insertion or BatchInsertConfig())

    def compute_each(self, model: Any, requests: Sequence[EditRequest], hparams: ReFACTHParams,
                     context: EditContext | None = None) -> list[EditOutcome]:
        """One edit per request over every planned slot; per slot, the v* of all requests in one
        vectorised run (each equals its single edit up to float rounding, docs/BENCH.md)."""
        ctx = context or EditContext()
        requests = list(requests)
        if len(requests) < 2:
            return [self.compute(model, [r], hparams, ctx) for r in requests]
        t0 = time.perf_counter()
        per_slot = []
        for slot, layer in plan_slots(model, hparams):
            name = slot_name(slot)
            values = compute_values(
                slot, requests, _at(hparams, layer), moments=ctx.second_moments, corpus=ctx.corpus,
                n_samples=ctx.n_samples, progress=ctx.progress, should_stop=ctx.should_stop,
                on_step=lambda i, ev, _n=name: ctx.step(_n, i, ev),
                preserve_requests=preserve_for(ctx.preserve, name), batch=ctx.batch_size,
            )
            per_slot.append((name, layer, values))
        share = (time.perf_counter() - t0) / len(requests)
        outcomes = []
        for i, request in enumerate(requests):
            edits = [SlotEdit(slot=name, layer=layer, result=values.results[i]) for name, layer, values in per_slot]
            result = ModelEditResult(edits=edits, delta=join_deltas(edits), timings=EditTimings(total_s=share))
            outcomes.append(self._outcome(request, result))
        return outcomes

    # ------------------------------------------------------------------ one request, every slot

    def _one(self, model: Any, request: EditRequest, hparams: ReFACTHParams, ctx: EditContext) -> EditOutcome:
        result = compute_model_edit(
            model, request, hparams, moments=ctx.second_moments, corpus=ctx.corpus, n_samples=ctx.n_samples,
            progress=ctx.progress, on_slot_step=lambda slot, ev: ctx.step(slot, 0, ev),
            should_stop=ctx.should_stop, preserve_requests=ctx.preserve,
        )
        return self._outcome(request, result)

    def _outcome(self, request: EditRequest, result: ModelEditResult) -> EditOutcome:
        result.delta.meta.setdefault("method", self.name)
        rows = [
            SlotRow(slot=e.slot, layer=e.layer, module=e.delta.module, readout=e.delta.meta.get("readout", ""),
                    p_target=float(e.result.p_target), steps_run=int(e.result.steps_run),
                    early_stopped=bool(e.result.early_stopped), division_factor=float(e.result.division_factor),
                    delta_norm=float(e.result.delta_norm))
            for e in result.edits
        ]

        def verify(model: Any) -> None:
            verify_model_edit(model, result)
            for row, e in zip(rows, result.edits):
                row.verify_error, row.weights_hash = e.result.verify_error, e.weights_hash

        return EditOutcome(
            method=self.name, delta=result.delta, slots=rows,
            requests=[RequestRow(request, float(result.p_target), int(result.steps_run), bool(result.early_stopped))],
            layer=result.layer, module=result.module, timings=result.timings,
            steps={(e.slot, 0): e.result.steps for e in result.edits},
            division_factor=float(result.division_factor), delta_norm=float(result.delta_norm),
            detail=result, verify=verify,
        )

    # ------------------------------------------------------------------ N requests, one delta

    def _batch(self, model: Any, requests: list[EditRequest], hparams: ReFACTHParams, ctx: EditContext,
               config: BatchInsertConfig) -> EditOutcome:
        first = slot_name(slot_list(model)[0])  # a batch edits the first slot
        result = compute_batch(
            model, requests, hparams, config, moments=ctx.second_moments,
            preserve_requests=preserve_for(ctx.preserve, first), corpus=ctx.corpus, n_samples=ctx.n_samples,
            progress=ctx.progress, on_step=lambda i, ev: ctx.step(first, i, ev), should_stop=ctx.should_stop,
            batch=ctx.batch_size,
        )
        return self._batch_outcome(model, requests, result, first)

    def _batch_outcome(self, model: Any, requests: list[EditRequest], result: BatchInsertResult,
                       first: str) -> EditOutcome:
        adapter = slot_list(model)[0].adapter
        outs = result.outcomes
        mean_p = sum(o.p_target for o in outs) / len(outs)
        slots = [SlotRow(slot=first, layer=layer, module=adapter.fc2_name(layer), readout=adapter.readout.spec(),
                         p_target=mean_p, steps_run=max(o.steps_run for o in outs),
                         early_stopped=all(o.early_stopped for o in outs))
                 for layer in result.layers]
        t = result.values.timings
        timings = EditTimings(stats_s=t.stats_s, key_s=t.key_s, optimize_s=t.optimize_s, insert_s=result.solve_s,
                              total_s=t.total_s + result.solve_s)
        top = result.layers[-1]
        result.delta.meta.setdefault("method", self.name)
        return EditOutcome(
            method=self.name, delta=result.delta, slots=slots,
            requests=[RequestRow(r, o.p_target, o.steps_run, o.early_stopped, o.residual)
                      for r, o in zip(requests, outs)],
            layer=top, module=adapter.fc2_name(top), timings=timings,
            steps={(first, i): v.steps for i, v in enumerate(result.values.results)},
            numbers={"bound": float(result.bound), "solve_s": float(result.solve_s)},
            detail=result,
        )


def _at(hparams: ReFACTHParams, layer: int) -> ReFACTHParams:
    """``hparams`` for one slot at ``layer`` (the per-slot choices already resolved)."""
    return replace(hparams, layer=layer, slots=(), slot_layers=())
