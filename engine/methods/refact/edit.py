"""One encoder slot, 1..N requests: keys, v* and the rank-one update of each, never touching the weights.

``compute_edit`` is one request (its v* by ``optimize_value``, pinned by the parity fixture);
``compute_values`` is N requests at one layer, the same keys, u, v_e, targets and v* (each request's
v* equals its single run up to float rounding) with the value optimisation run as one padded batch.
Both share the request checks (``locate``), the C lookup (``second_moment_for``) and the assembly of
a request's ``EditResult`` (``assemble``). ``model`` is anything with ``.text_encoder``,
``.tokenizer`` and ``.adapter``: an encoder slot, a LoadedModel (its first slot) or a test stand-in;
``engine.methods.refact.model_edit`` runs ``compute_edit`` for every slot of a model.
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
from engine.methods.outcome import EditTimings
from engine.methods.refact.hparams import ReFACTHParams
from engine.methods.refact.insert import insert, right_vector
from engine.methods.refact.keys import bare_keys_values, chunked_keys, left_vector, left_vectors, with_earlier_keys
from engine.methods.refact.values import (
    BatchStats,
    BatchStepCallback,
    ValueResult,
    ValueTask,
    encode_texts,
    optimize_value,
    optimize_values,
)
from engine.request import EditRequest
from engine.slots import check_slot_layer
from engine.tokens import LocatedText, check_length, locate_all, rewriting_templates

_DEFAULT_STORE: SecondMomentStore | None = None


def default_store() -> SecondMomentStore:
    """A process-wide, memory-only statistics cache for callers that pass neither C nor a store."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = SecondMomentStore(None)
    return _DEFAULT_STORE


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


@dataclass
class BatchValues:
    """Per-request rank-one results (in request order) and how the vectorised run went."""

    results: list[EditResult]
    stats: BatchStats
    second_moment: torch.Tensor  # C used for u (with preserved keys folded in, if any)
    timings: EditTimings = field(default_factory=EditTimings)


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32).clone()


@dataclass
class Located:
    """A request's prompts located in the tokenizer: the rewriting prompts (the bare prompt first,
    then the context templates) and the prompts k* averages (the templates; the bare one without)."""

    rewriting: list[LocatedText]
    key_prompts: list[LocatedText]


def locate(model: Any, request: EditRequest, hparams: ReFACTHParams) -> Located:
    """Validate ``request`` and locate its subject token in every prompt the edit reads; every target
    text must fit the encoder (RequestError / TokenizationError, one line)."""
    request.validate()
    tokenizer, max_len = model.tokenizer, model.adapter.max_length
    rewriting = locate_all(tokenizer, rewriting_templates(hparams.templates), request.prompt, request.subject, max_len)
    for text in (request.target, request.source, *request.contrastive):
        check_length(tokenizer, text, max_len)
    key_prompts = (
        locate_all(tokenizer, list(hparams.templates), request.prompt, request.subject, max_len)
        if hparams.templates
        else [rewriting[0]]
    )
    return Located(rewriting, key_prompts)


def target_texts(request: EditRequest) -> list[str]:
    """The texts v* is scored against; the target is column 0."""
    return [request.target, request.source, *request.contrastive]


def second_moment_for(model: Any, layer: int, second_moment: torch.Tensor | None, moments: SecondMomentStore | None,
                      corpus: Path | None, n_samples: int | None, progress: ProgressCallback | None) -> torch.Tensor:
    """``second_moment`` when given, else C at ``layer`` from ``moments`` (default: the process-wide cache)."""
    if second_moment is not None:
        return second_moment
    store = moments if moments is not None else default_store()
    return store.get(model, layer, corpus=corpus, n_samples=n_samples, progress=progress)


def assemble(adapter: Any, request: EditRequest, hparams: ReFACTHParams, located: Located, value: ValueResult, *,
             k_templates: torch.Tensor, k_star: torch.Tensor, u: torch.Tensor, k_e: torch.Tensor, v_e: torch.Tensor,
             targets: torch.Tensor, timings: EditTimings, component: str = DEFAULT_COMPONENT,
             upstream_hash: str | None = None) -> EditResult:
    """r = (v* - v_e) / (k_e . u) and the request's EditResult (delta with its meta, CPU tensors)."""
    layer = hparams.layer
    v0 = v_e
    v_star = v0 + value.delta
    r, division = right_vector(v_star, v_e, k_e, u, hparams.min_division)
    meta = {
        "slot": component,
        "readout": adapter.readout.spec(),
        **delta_meta(adapter, layer, request, hparams, division, value.p_target, value.steps_run, upstream_hash),
    }
    delta = EditDelta(layer=layer, module=adapter.fc2_name(layer), u=u, r=r, meta=meta, component=component)
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
            "k_templates": cpu_copy(k_templates),
            "k_star": cpu_copy(k_star),
            "u": cpu_copy(u),
            "v0": cpu_copy(v0),
            "delta": cpu_copy(value.delta),
            "v_star": cpu_copy(v_star),
            "k_e": cpu_copy(k_e),
            "v_e": cpu_copy(v_e),
            "r": cpu_copy(r),
            "targets": cpu_copy(targets),
        },
        first_clamped_step=value.first_clamped_step,
        prompts=[p.text for p in located.rewriting],
        lookup_indices=[p.index for p in located.rewriting],
    )


def compute_edit(
    model: Any,
    request: EditRequest,
    hparams: ReFACTHParams,
    *,
    second_moment: torch.Tensor | None = None,
    moments: SecondMomentStore | None = None,
    corpus: Path | None = None,
    n_samples: int | None = None,
    progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    preserve_requests: Sequence[EditRequest] = (),
) -> EditResult:
    """Compute the rank-one update for ``request``; never modifies weights.

    ``second_moment`` (C at the layer's fc2 input) wins over ``moments``; with neither, C comes
    from a process-wide memory cache over ``corpus`` (default: the caption corpus).
    ``preserve_requests``: earlier edits of the same layer whose keys join C with weight
    ``hparams.preserve`` (ignored when it is 0, the paper's setting).
    Raises RequestError, TokenizationError, EditCancelled or InsertionRefusedError.
    """
    t_start = time.perf_counter()
    adapter, tokenizer = model.adapter, model.tokenizer
    component = str(getattr(model, "component", DEFAULT_COMPONENT))
    layer = hparams.layer
    check_slot_layer(adapter, layer, component)
    located = locate(model, request, hparams)
    rewriting = located.rewriting
    timings = EditTimings()

    t0 = time.perf_counter()
    second_moment = second_moment_for(model, layer, second_moment, moments, corpus, n_samples, progress)
    timings.stats_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    # One prefix pass serves the keys and the v* loop: the rewriting prompts are the bare prompt
    # (k_e, v_e) followed by the context templates (k* averages those; with none, the bare prompt).
    with torch.no_grad():
        state = adapter.prefix(adapter.tokenize(tokenizer, [p.text for p in rewriting]), layer)
    row_of = {p.text: i for i, p in enumerate(rewriting)}
    k_templates = state.key[[row_of[p.text] for p in located.key_prompts], [p.index for p in located.key_prompts]]
    k_star = k_templates.mean(dim=0)
    second_moment = with_earlier_keys(model, second_moment, hparams, preserve_requests)
    u = left_vector(second_moment, k_star, hparams.ridge, hparams.moment_rank)
    bare = rewriting[0]
    k_e = state.key[0, bare.index].clone()
    v_e = state.mlp_out[0, bare.index].clone()
    timings.key_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Targets come from the frozen base encoder, as in the paper's sequential setting: later edits
    # aim at the original model's features, not at features already moved by earlier edits.
    texts = target_texts(request)
    with fc2_weights(model, base_fc2_of(model)):
        targets = encode_texts(adapter, tokenizer, texts)
    value = optimize_value(
        adapter, tokenizer, rewriting, layer, targets, v_e.clone(), hparams, on_step=on_step, should_stop=should_stop,
        state=state, target_texts=texts,
    )
    timings.optimize_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = assemble(adapter, request, hparams, located, value, k_templates=k_templates, k_star=k_star, u=u,
                      k_e=k_e, v_e=v_e, targets=targets, timings=timings, component=component)
    timings.insert_s = time.perf_counter() - t0
    timings.total_s = time.perf_counter() - t_start
    return result


def compute_values(
    model: Any,
    requests: Sequence[EditRequest],
    hparams: ReFACTHParams,
    *,
    second_moment: torch.Tensor | None = None,
    moments: SecondMomentStore | None = None,
    corpus: Path | None = None,
    n_samples: int | None = None,
    progress: ProgressCallback | None = None,
    on_step: BatchStepCallback | None = None,
    should_stop: StopCheck | None = None,
    preserve_requests: Sequence[EditRequest] = (),
    batch: int | None = None,
) -> BatchValues:
    """``compute_edit`` for every request at ``hparams.layer``, the v* optimisation vectorised.

    ``batch`` caps the requests per padded batch (chunks run one after another). Raises
    RequestError, TokenizationError, EditCancelled or InsertionRefusedError; never modifies weights.
    """
    t_start = time.perf_counter()
    adapter, tokenizer = model.adapter, model.tokenizer
    component = str(getattr(model, "component", DEFAULT_COMPONENT))
    layer = hparams.layer
    check_slot_layer(adapter, layer, component)
    located = [locate(model, req, hparams) for req in requests]
    timings = EditTimings()
    t0 = time.perf_counter()
    second_moment = second_moment_for(model, layer, second_moment, moments, corpus, n_samples, progress)
    timings.stats_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    flat = [p for loc in located for p in loc.key_prompts]
    k_all = chunked_keys(adapter, tokenizer, flat, layer)
    k_templates, start = [], 0
    for loc in located:
        k_templates.append(k_all[start : start + len(loc.key_prompts)])
        start += len(loc.key_prompts)
    k_star = torch.stack([k.mean(dim=0) for k in k_templates])
    second_moment = with_earlier_keys(model, second_moment, hparams, preserve_requests)
    u = left_vectors(second_moment, k_star, hparams.ridge, hparams.moment_rank)
    k_e, v_e = bare_keys_values(adapter, tokenizer, [loc.rewriting[0] for loc in located], layer)
    timings.key_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = [target_texts(req) for req in requests]
    with fc2_weights(model, base_fc2_of(model)):
        encoded = encode_texts(adapter, tokenizer, [t for group in texts for t in group])
    tasks, start = [], 0
    for i, group in enumerate(texts):
        tasks.append(ValueTask(located=located[i].rewriting, targets=encoded[start : start + len(group)],
                               v0=v_e[i].clone(), target_texts=group))
        start += len(group)
    values = optimize_values(
        adapter, tokenizer, tasks, layer, hparams, batch=batch, on_step=on_step, should_stop=should_stop
    )
    timings.optimize_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    upstream = adapter.upstream_hash(layer)
    results = [
        assemble(adapter, req, hparams, located[i], value, k_templates=k_templates[i], k_star=k_star[i], u=u[i],
                 k_e=k_e[i], v_e=v_e[i], targets=tasks[i].targets, timings=EditTimings(), component=component,
                 upstream_hash=upstream)
        for i, (req, value) in enumerate(zip(requests, values.values))
    ]
    timings.insert_s = time.perf_counter() - t0
    timings.total_s = time.perf_counter() - t_start
    return BatchValues(results=results, stats=values.stats, second_moment=second_moment, timings=timings)


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


def apply_edit(model: Any, request: EditRequest, hparams: ReFACTHParams, **kwargs: Any) -> EditResult:
    """``compute_edit`` + insert the update + verify W k_e == v* (restores W and raises if not)."""
    result = compute_edit(model, request, hparams, **kwargs)
    t0 = time.perf_counter()
    result.verify_error = insert(model.adapter, result.delta, result.tensors["k_e"], result.tensors["v_star"])
    spent = time.perf_counter() - t0
    result.timings.insert_s += spent
    result.timings.total_s += spent
    return result
