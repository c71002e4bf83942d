"""ReFACT edits: the public entry point of the algorithm.

``compute_edit`` finds the rank-one update of one encoder for one request without touching the
model; ``apply_edit`` also inserts it and checks W k_e == v*. ``model`` is anything with
``.text_encoder``, ``.tokenizer`` and ``.adapter``: an encoder slot, a LoadedModel (its first slot)
or a small test stand-in. ``engine.slot_edit`` runs it for every slot of a multi-encoder model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from engine.base_weights import base_fc2_of, fc2_weights
from engine.covariance import SecondMomentStore
from engine.delta import DEFAULT_COMPONENT, EditDelta
from engine.events import ProgressCallback, StepCallback, StepEvent, StopCheck
from engine.hparams import ReFACTHParams
from engine.insertion import insert, right_vector
from engine.keys import keys_at, left_vector
from engine.optimize import encode_texts, optimize_value
from engine.request import EditRequest
from engine.slots import check_slot_layer
from engine.tokens import check_length, locate_all, locate_subject, rewriting_templates

_DEFAULT_STORE: SecondMomentStore | None = None


def default_store() -> SecondMomentStore:
    """A process-wide, memory-only statistics cache for callers that pass neither C nor a store."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = SecondMomentStore(None)
    return _DEFAULT_STORE


@dataclass
class EditTimings:
    stats_s: float = 0.0
    key_s: float = 0.0
    optimize_s: float = 0.0
    insert_s: float = 0.0
    total_s: float = 0.0


@dataclass
class EditResult:
    """Everything one edit produced; ``tensors`` are CPU float32 copies for inspection and storage."""

    delta: EditDelta
    p_target: float
    steps_run: int
    optimizer_updates: int
    early_stopped: bool
    division_factor: float
    delta_norm: float
    v0_norm: float
    timings: EditTimings
    steps: list[StepEvent]
    tensors: dict[str, torch.Tensor]
    first_clamped_step: int | None = None
    prompts: list[str] = field(default_factory=list)
    lookup_indices: list[int] = field(default_factory=list)
    verify_error: float | None = None  # set by apply_edit


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32).clone()


def compute_edit(
    model: Any,
    request: EditRequest,
    hparams: ReFACTHParams,
    *,
    second_moment: torch.Tensor | None = None,
    stats: SecondMomentStore | None = None,
    corpus: Path | None = None,
    n_samples: int | None = None,
    progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    preserve_requests: Sequence[EditRequest] = (),
) -> EditResult:
    """Compute the rank-one update for ``request``; never modifies weights.

    ``second_moment`` (C at the layer's fc2 input) wins over ``stats``; with neither, C comes
    from a process-wide memory cache over ``corpus`` (default: the caption corpus).
    ``preserve_requests``: earlier edits of the same layer whose keys join C with weight
    ``hparams.preserve`` (ignored when it is 0, the paper's setting).
    Raises RequestError, TokenizationError, EditCancelled or InsertionRefusedError.
    """
    t_start = time.perf_counter()
    request.validate()
    adapter, tokenizer = model.adapter, model.tokenizer
    component = str(getattr(model, "component", DEFAULT_COMPONENT))
    layer = hparams.layer
    check_slot_layer(adapter, layer, component)
    max_len = adapter.max_length
    rewriting = locate_all(tokenizer, rewriting_templates(hparams.templates), request.prompt, request.subject, max_len)
    for text in (request.target, request.source, *request.contrastive):
        check_length(tokenizer, text, max_len)
    timings = EditTimings()

    t0 = time.perf_counter()
    if second_moment is None:
        store = stats if stats is not None else default_store()
        second_moment = store.get(model, layer, corpus=corpus, n_samples=n_samples, progress=progress)
    timings.stats_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    # One prefix pass serves the keys and the v* loop: the rewriting prompts are the bare prompt
    # (k_e, v_e) followed by the context templates (k* averages those; with none, the bare prompt).
    with torch.no_grad():
        state = adapter.prefix(adapter.tokenize(tokenizer, [p.text for p in rewriting]), layer)
    key_prompts = (
        locate_all(tokenizer, list(hparams.templates), request.prompt, request.subject, max_len)
        if hparams.templates
        else [rewriting[0]]
    )
    row_of = {p.text: i for i, p in enumerate(rewriting)}
    k_templates = state.key[[row_of[p.text] for p in key_prompts], [p.index for p in key_prompts]]
    k_star = k_templates.mean(dim=0)
    if hparams.preserve > 0 and preserve_requests:
        earlier = earlier_keys(model, preserve_requests, hparams)
        second_moment = second_moment.to(torch.float64) + hparams.preserve * earlier.T @ earlier
    u = left_vector(second_moment, k_star, hparams.ridge)
    bare = rewriting[0]
    k_e = state.key[0, bare.index].clone()
    v_e = state.mlp_out[0, bare.index].clone()
    v0 = v_e.clone()
    timings.key_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Targets come from the frozen base encoder, as in the paper's sequential setting: later edits
    # aim at the original model's features, not at features already moved by earlier edits.
    with fc2_weights(model, base_fc2_of(model)):
        target_texts = [request.target, request.source, *request.contrastive]
        targets = encode_texts(adapter, tokenizer, target_texts)
    value = optimize_value(
        adapter, tokenizer, rewriting, layer, targets, v0, hparams, on_step=on_step, should_stop=should_stop,
        state=state, target_texts=target_texts,
    )
    v_star = v0 + value.delta
    timings.optimize_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    r, division = right_vector(v_star, v_e, k_e, u, hparams.min_division)
    meta = {
        "slot": component,
        "readout": adapter.readout.spec(),
        **delta_meta(adapter, layer, request, hparams, division, value.p_target, value.steps_run),
    }
    delta = EditDelta(layer=layer, module=adapter.fc2_name(layer), u=u, r=r, meta=meta, component=component)
    timings.insert_s = time.perf_counter() - t0
    timings.total_s = time.perf_counter() - t_start

    return EditResult(
        delta=delta,
        p_target=value.p_target,
        steps_run=value.steps_run,
        optimizer_updates=value.optimizer_updates,
        early_stopped=value.early_stopped,
        division_factor=division,
        delta_norm=float(torch.norm(value.delta)),
        v0_norm=float(torch.norm(v0)),
        timings=timings,
        steps=value.steps,
        tensors={
            "k_templates": _cpu(k_templates),
            "k_star": _cpu(k_star),
            "u": _cpu(u),
            "v0": _cpu(v0),
            "delta": _cpu(value.delta),
            "v_star": _cpu(v_star),
            "k_e": _cpu(k_e),
            "v_e": _cpu(v_e),
            "r": _cpu(r),
            "targets": _cpu(targets),
        },
        first_clamped_step=value.first_clamped_step,
        prompts=[p.text for p in rewriting],
        lookup_indices=[p.index for p in rewriting],
    )


def delta_meta(adapter: Any, layer: int, request: EditRequest, hparams: ReFACTHParams, division: float,
               p_target: float, steps_run: int, upstream_hash: str | None = None) -> dict[str, str]:
    """The metadata every ReFACT delta carries: encoder, request, hyperparameters and the edit's outcome."""
    return {
        "family": adapter.family,
        "upstream_hash": upstream_hash if upstream_hash is not None else adapter.upstream_hash(layer),
        "request": json.dumps(request.to_dict(), ensure_ascii=False, sort_keys=True),
        "hparams": json.dumps(hparams.to_dict(), sort_keys=True),
        "hparams_fingerprint": hparams.fingerprint(),
        "division_factor": repr(division),
        "p_target": repr(p_target),
        "steps_run": str(steps_run),
    }


def earlier_keys(model: Any, requests: Sequence[EditRequest], hparams: ReFACTHParams) -> torch.Tensor:
    """Keys of earlier requests at ``hparams.layer``: for each, its bare-prompt key k_e (where its
    v* was inserted) and its template mean k*; rows of a float64 CPU matrix."""
    adapter, tokenizer = model.adapter, model.tokenizer
    keys = []
    for req in requests:
        located = locate_all(tokenizer, ["{}", *hparams.templates], req.prompt, req.subject, adapter.max_length)
        with torch.no_grad():
            rows = keys_at(adapter, tokenizer, located, hparams.layer)
        keys.append(rows[0])
        if len(rows) > 1:
            keys.append(rows[1:].mean(dim=0))
    return torch.stack(keys).to(device="cpu", dtype=torch.float64)


def apply_edit(model: Any, request: EditRequest, hparams: ReFACTHParams, **kwargs: Any) -> EditResult:
    """``compute_edit`` + insert the update + verify W k_e == v* (restores W and raises if not)."""
    result = compute_edit(model, request, hparams, **kwargs)
    t0 = time.perf_counter()
    result.verify_error = insert(model.adapter, result.delta, result.tensors["k_e"], result.tensors["v_star"])
    spent = time.perf_counter() - t0
    result.timings.insert_s += spent
    result.timings.total_s += spent
    return result


def subject_index(model: Any, template: str, prompt: str, subject: str | None = None) -> int:
    """Lookup-token position of ``subject`` in ``template`` filled with ``prompt`` (for UIs and probes)."""
    return locate_subject(model.tokenizer, template, prompt, subject, model.adapter.max_length).index
