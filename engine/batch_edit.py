"""Many ReFACT requests at one layer: keys, targets and v* for all of them, vectorised.

``compute_values`` is ``compute_edit`` for N requests: the same keys, u, v_e, targets and v* (each
request's v* equals its single run up to float rounding), with the value optimisation run as one
padded batch (engine.batch_optimize). It never modifies weights. Each request's rank-one
``EditResult`` comes back; ``engine.batch_insert`` turns them into one batch delta.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from engine.base_weights import base_fc2_of, fc2_weights
from engine.batch_optimize import BatchStats, BatchStepCallback, ValueTask, optimize_values
from engine.covariance import SecondMomentStore
from engine.delta import EditDelta
from engine.errors import InsertionRefusedError
from engine.events import ProgressCallback, StopCheck
from engine.hparams import HParamsError, ReFACTHParams
from engine.insertion import right_vector
from engine.keys import _cholesky, keys_at
from engine.optimize import encode_texts
from engine.refact import EditResult, EditTimings, _cpu, default_store, delta_meta, earlier_keys
from engine.request import EditRequest
from engine.tokens import LocatedText, check_length, locate_all, rewriting_templates

KEY_CHUNK = 256  # prompts per padded forward when reading keys


@dataclass
class BatchValues:
    """Per-request rank-one results (in request order) and how the vectorised run went."""

    results: list[EditResult]
    stats: BatchStats
    second_moment: torch.Tensor  # C used for u (with preserved keys folded in, if any)
    timings: EditTimings = field(default_factory=EditTimings)


def _chunked_keys(adapter: Any, tokenizer: Any, located: Sequence[LocatedText], layer: int) -> torch.Tensor:
    parts = [keys_at(adapter, tokenizer, located[i : i + KEY_CHUNK], layer) for i in range(0, len(located), KEY_CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def bare_keys_values(adapter: Any, tokenizer: Any, bare: Sequence[LocatedText], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_e, v_e) at each bare prompt's lookup token: rows of (N, in) and (N, out)."""
    ks, vs = [], []
    for i in range(0, len(bare), KEY_CHUNK):
        part = bare[i : i + KEY_CHUNK]
        state = adapter.prefix(adapter.tokenize(tokenizer, [p.text for p in part]), layer)
        rows = torch.arange(len(part), device=state.key.device)
        idx = torch.tensor([p.index for p in part], device=state.key.device)
        ks.append(state.key[rows, idx])
        vs.append(state.mlp_out[rows, idx])
    return torch.cat(ks), torch.cat(vs)


def left_vectors(second_moment: torch.Tensor, k_star: torch.Tensor, ridge: float) -> torch.Tensor:
    """u_i = C^-1 k*_i / ||C^-1 k*_i|| for rows of ``k_star`` (one Cholesky, one multi-column solve)."""
    k = k_star.detach().to("cpu", torch.float64).T
    u = torch.cholesky_solve(k, _cholesky(second_moment, ridge))
    norms = torch.linalg.vector_norm(u, dim=0)
    if not torch.isfinite(norms).all() or bool((norms == 0).any()):
        raise InsertionRefusedError("C^-1 k* is zero or not finite for a request of the batch; check the statistics")
    return (u / norms).T.to(torch.float32)


def compute_values(
    model: Any,
    requests: Sequence[EditRequest],
    hparams: ReFACTHParams,
    *,
    second_moment: torch.Tensor | None = None,
    stats: SecondMomentStore | None = None,
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
    layer = hparams.layer
    if not 0 <= layer < adapter.num_layers:
        raise HParamsError(f"layer {layer} does not exist; this encoder has layers 0..{adapter.num_layers - 1}")
    max_len = adapter.max_length
    rewriting, key_prompts = [], []
    for req in requests:
        req.validate()
        rewriting.append(locate_all(tokenizer, rewriting_templates(hparams.templates), req.prompt, req.subject, max_len))
        for text in (req.target, req.source, *req.contrastive):
            check_length(tokenizer, text, max_len)
        key_prompts.append(
            locate_all(tokenizer, list(hparams.templates), req.prompt, req.subject, max_len) if hparams.templates else [rewriting[-1][0]]
        )
    timings = EditTimings()
    t0 = time.perf_counter()
    if second_moment is None:
        store = stats if stats is not None else default_store()
        second_moment = store.get(model, layer, corpus=corpus, n_samples=n_samples, progress=progress)
    timings.stats_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    flat = [p for group in key_prompts for p in group]
    k_all = _chunked_keys(adapter, tokenizer, flat, layer)
    k_templates, start = [], 0
    for group in key_prompts:
        k_templates.append(k_all[start : start + len(group)])
        start += len(group)
    k_star = torch.stack([k.mean(dim=0) for k in k_templates])
    if hparams.preserve > 0 and preserve_requests:
        earlier = earlier_keys(model, preserve_requests, hparams)
        second_moment = second_moment.to(torch.float64) + hparams.preserve * earlier.T @ earlier
    u = left_vectors(second_moment, k_star, hparams.ridge)
    k_e, v_e = bare_keys_values(adapter, tokenizer, [r[0] for r in rewriting], layer)
    timings.key_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = [[req.target, req.source, *req.contrastive] for req in requests]
    with fc2_weights(model, base_fc2_of(model)):
        encoded = encode_texts(adapter, tokenizer, [t for group in texts for t in group])
    tasks, start = [], 0
    for i, group in enumerate(texts):
        tasks.append(ValueTask(located=rewriting[i], targets=encoded[start : start + len(group)], v0=v_e[i].clone(),
                               target_texts=group))
        start += len(group)
    values = optimize_values(
        adapter, tokenizer, tasks, layer, hparams, batch=batch, on_step=on_step, should_stop=should_stop
    )
    timings.optimize_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    module, upstream = adapter.fc2_name(layer), adapter.upstream_hash(layer)
    results = []
    for i, (req, value) in enumerate(zip(requests, values.values)):
        v0 = tasks[i].v0
        v_star = v0 + value.delta
        r, division = right_vector(v_star, v_e[i], k_e[i], u[i], hparams.min_division)
        meta = delta_meta(adapter, layer, req, hparams, division, value.p_target, value.steps_run, upstream)
        results.append(
            EditResult(
                delta=EditDelta(layer=layer, module=module, u=u[i], r=r, meta=meta),
                p_target=value.p_target,
                steps_run=value.steps_run,
                optimizer_updates=value.optimizer_updates,
                early_stopped=value.early_stopped,
                division_factor=division,
                delta_norm=float(torch.norm(value.delta)),
                v0_norm=float(torch.norm(v0)),
                timings=EditTimings(),
                steps=value.steps,
                tensors={
                    "k_templates": _cpu(k_templates[i]),
                    "k_star": _cpu(k_star[i]),
                    "u": _cpu(u[i]),
                    "v0": _cpu(v0),
                    "delta": _cpu(value.delta),
                    "v_star": _cpu(v_star),
                    "k_e": _cpu(k_e[i]),
                    "v_e": _cpu(v_e[i]),
                    "r": _cpu(r),
                    "targets": _cpu(tasks[i].targets),
                },
                first_clamped_step=value.first_clamped_step,
                prompts=[p.text for p in rewriting[i]],
                lookup_indices=[p.index for p in rewriting[i]],
            )
        )
    timings.insert_s = time.perf_counter() - t0
    timings.total_s = time.perf_counter() - t_start
    return BatchValues(results=results, stats=values.stats, second_moment=second_moment, timings=timings)
