"""Insert a batch of N requests as ONE ``EditDelta``: rank-one sum, joint solve, sequential, or spread.

- ``rank-one``: the sum of the N independent ReFACT updates (each equals its single edit).
- ``joint``: one C-weighted ridge solve at the layer (engine.methods.refact.joint_solve) over two keys per
  request, its bare-prompt key k_e (aimed at v*) and its template mean k* (aimed at W k* + delta,
  the same shift).
- ``spread``: MEMIT-style over several layers. The target is the residual stream (the sum the
  layer's finish takes: residual + MLP output) after the last layer at each request's lookup
  token, base + delta. Layer by layer, the remaining gap divided by the layers left is solved in
  jointly, keys recomputed on the model edited so far; C of every layer is taken from the base
  model before anything is edited. The last layer closes what earlier layers under-deliver.
- ``sequential``: the requests one after another at the layer, each solved over its two keys on top
  of the updates before it (engine.methods.refact.joint_solve.sequential_factors); with
  ``null_space`` each update is projected off the keys of every earlier request (AlphaEdit's
  projection), so later requests leave earlier ones' W k exactly where they were.

Rounds (joint and sequential): round 1 is the solve above. Each further round re-optimises v* on
the model edited so far (the shift each request still needs there, its target already holding on
the edited model gives a shift of exactly 0) and solves that shift in over the same keys on top of
the earlier rounds; rounds stop early once every target holds. One round is the plain solve.

Protection of earlier edits (every mode): their keys join C with weight ``preserve``,
C' = C + preserve * sum k_p k_p^T, the ``--preserve`` of single edits. Keys are unit-free
activations with ||k||^2 ~ 1e2..1e3 on SD1 against tr C ~ 85, so preserve >= 1e-3 already acts as
a hard constraint there. ``null_space`` additionally restricts the update to the directions the
protected keys do not span (AlphaEdit's projection), so dW k_p = 0 exactly (for ``sequential``, the
earlier requests of the batch are protected too).

Every function here leaves the model's weights as they were (verification applies the delta to a
saved copy's place and restores it bit-exactly). A batch whose update does not deliver its requests
is refused by the guard (engine.methods.refact.guard) with BatchRefusedError; a non-finite update
raises InsertionRefusedError.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from engine.base_weights import base_fc2_of, fc2_weights
from engine.covariance import SecondMomentStore
from engine.delta import DEFAULT_COMPONENT, EditDelta, MatrixUpdate, WeightSnapshot, add_low_rank
from engine.errors import InsertionRefusedError
from engine.methods.refact.edit import BatchValues, compute_values, default_store
from engine.methods.refact.guard import check_batch
from engine.methods.refact.hparams import HParamsError, ReFACTHParams
from engine.methods.refact.joint_solve import joint_factors, residual_bound, sequential_factors
from engine.methods.refact.keys import bare_keys_values, chunked_keys, earlier_keys
from engine.request import EditRequest
from engine.tokens import locate_all

MODES = ("rank-one", "joint", "spread", "sequential")
ROUND_MODES = ("joint", "sequential")  # the one-layer solves a re-optimised v* can be solved into again
MAX_ROUNDS = 10
DEFAULT_LAMBDA = 1e-2


@dataclass(frozen=True)
class BatchInsertConfig:
    """How a batch goes into the weights. ``layers``: spread's layers (the last one is where v* is
    optimised); other modes use ``hparams.layer``. ``lam`` is relative (see engine.methods.refact.joint_solve).
    ``rounds``: solves of re-optimised v* (joint and sequential; 1 = the plain solve)."""

    mode: str = "rank-one"
    layers: tuple[int, ...] = ()
    lam: float = DEFAULT_LAMBDA
    null_space: bool = False
    component: str = DEFAULT_COMPONENT
    rounds: int = 1

    def validate(self, adapter: Any) -> None:
        """HParamsError for a bad mode or lambda, or a layer that cannot reach the readout (the range a
        single edit's --layer is held to: past it the update would be zero)."""
        if self.mode not in MODES:
            raise HParamsError(f"insertion mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.lam >= 0 or not math.isfinite(self.lam):
            raise HParamsError(f"--lambda must be a finite number >= 0, got {self.lam}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= MAX_ROUNDS:
            raise HParamsError(f"--rounds must be an integer in 1..{MAX_ROUNDS}, got {self.rounds!r}")
        if self.rounds > 1 and self.mode not in ROUND_MODES:
            raise HParamsError(f"--rounds applies to --insert {' and '.join(ROUND_MODES)}; a {self.mode} batch "
                               "solves once (drop --rounds)")
        last = adapter.last_editable
        bad = [layer for layer in self.layers if not 0 <= layer <= last]
        if bad:
            cut = "" if last == adapter.num_layers - 1 else (
                f"; later layers cannot reach its {adapter.readout.kind} readout, so their update would be zero")
            raise HParamsError(f"--layers {bad[0]} is out of range; this encoder's editable layers are "
                               f"0..{last} of {adapter.num_layers}{cut}")
        if len(set(self.layers)) != len(self.layers):
            raise HParamsError("--layers lists a layer twice; give each layer once")

    def edit_layers(self, hparams: ReFACTHParams) -> tuple[int, ...]:
        return tuple(sorted(self.layers)) if self.mode == "spread" and self.layers else (hparams.layer,)


@dataclass
class RequestOutcome:
    """One request of the batch after insertion: residual ||W'k_e - v*|| / ||v*|| (at the last
    edited layer's residual stream for spread) and the pre-edit miss it started from."""

    residual: float
    before: float
    p_target: float
    steps_run: int
    early_stopped: bool


@dataclass
class BatchInsertResult:
    delta: EditDelta
    mode: str
    layers: tuple[int, ...]
    outcomes: list[RequestOutcome]
    values: BatchValues
    bound: float
    lam_abs: dict[int, float] = field(default_factory=dict)
    solve_s: float = 0.0
    rounds: int = 1  # rounds actually solved (fewer than asked once every target held)


def _linear(model: Any, layer: int) -> torch.nn.Linear:
    return model.adapter.fc2(layer)


def _stream(model: Any, located: Sequence, layer: int) -> torch.Tensor:
    """residual + MLP output of ``layer`` at each prompt's lookup token (N, out), current weights."""
    adapter, tokenizer = model.adapter, model.tokenizer
    out = []
    with torch.no_grad():
        for i in range(0, len(located), 256):
            part = located[i : i + 256]
            state = adapter.prefix(adapter.tokenize(tokenizer, [p.text for p in part]), layer)
            rows = torch.arange(len(part), device=state.key.device)
            idx = torch.tensor([p.index for p in part], device=state.key.device)
            out.append((state.residual[rows, idx] + state.mlp_out[rows, idx]).to(torch.float64).cpu())
    return torch.cat(out)


def _protected_c(model, c, layer, hparams, preserve_requests):
    """(C', protected keys) at ``layer``: earlier edits' keys folded into C with weight preserve."""
    if not preserve_requests:
        return c, None
    keys = earlier_keys(model, preserve_requests, hparams.with_overrides(layer=layer))
    if hparams.preserve > 0:
        c = c.to(torch.float64) + hparams.preserve * keys.T @ keys
    return c, keys


def _template_locs(model, requests, hparams):
    tok, max_len = model.tokenizer, model.adapter.max_length
    return [locate_all(tok, list(hparams.templates) or ["{}"], r.prompt, r.subject, max_len) for r in requests]


def _pair_keys(model, requests, hparams, layer, tmpl) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_e rows, k* rows) at ``layer`` on the current weights."""
    adapter, tok = model.adapter, model.tokenizer
    bare = [locate_all(tok, ["{}"], r.prompt, r.subject, adapter.max_length)[0] for r in requests]
    k_e, _ = bare_keys_values(adapter, tok, bare, layer)
    flat = chunked_keys(adapter, tok, [p for g in tmpl for p in g], layer)
    k_star = flat.view(len(requests), -1, flat.shape[-1]).mean(dim=1)
    return k_e, k_star


def compute_batch(
    model: Any,
    requests: Sequence[EditRequest],
    hparams: ReFACTHParams,
    config: BatchInsertConfig = BatchInsertConfig(),
    *,
    values: BatchValues | None = None,
    moments: SecondMomentStore | None = None,
    preserve_requests: Sequence[EditRequest] = (),
    **value_kwargs: Any,
) -> BatchInsertResult:
    """v* for every request (vectorised) and the batch's delta; the model's weights are unchanged.

    ``value_kwargs`` go to ``engine.methods.refact.edit.compute_values`` (batch, on_step, should_stop,
    corpus, n_samples, progress). Refuses on non-finite values (InsertionRefusedError) and, through
    the guard (BatchRefusedError), on an update that changes nothing or a request left past its
    limit: ``residual_bound(lam)`` of its miss, the default lambda's for rank-one.
    """
    adapter = model.adapter
    config.validate(adapter)
    if not requests:
        raise HParamsError("a batch needs at least one request")
    layers = config.edit_layers(hparams)
    hp = hparams.with_overrides(layer=layers[-1])
    store = moments if moments is not None else default_store()
    corpus, n_samples = value_kwargs.get("corpus"), value_kwargs.get("n_samples")
    if config.mode == "spread":
        # C of every layer from the base model, before any layer of the batch is edited.
        with fc2_weights(model, base_fc2_of(model)):
            base_c = {layer: store.get(model, layer, corpus=corpus, n_samples=n_samples) for layer in layers}
    else:  # one layer: the same C a single edit of the current model uses
        base_c = {hp.layer: store.get(model, hp.layer, corpus=corpus, n_samples=n_samples)}
    if values is None:
        values = compute_values(
            model, requests, hp, second_moment=base_c[layers[-1]], preserve_requests=preserve_requests, **value_kwargs
        )
    t0 = time.perf_counter()
    last, rounds_run = values, 1
    lam_abs: dict[int, float] = {}
    if config.mode == "rank-one":
        left = torch.stack([r.delta.r for r in values.results], dim=1)
        right = torch.stack([r.delta.u for r in values.results], dim=1)
        updates = [MatrixUpdate(config.component, adapter.fc2_name(hp.layer), left, right, hp.layer)]
        bound = residual_bound(DEFAULT_LAMBDA)
    else:
        updates, lam_abs = _solve_layers(model, requests, hp, config, layers, base_c, values, preserve_requests)
        bound = residual_bound(config.lam)
        for _ in range(1, config.rounds):
            again = _revalue(model, requests, hp, updates, base_c[hp.layer], value_kwargs)
            if all(r.early_stopped and r.steps_run == 1 for r in again.results):
                break  # every target already holds on the edited model: its shift is 0, a round adds nothing
            more, lam_abs = _solve_layers(model, requests, hp, config, layers, base_c, again, preserve_requests)
            updates = _merged(updates, more)
            last, rounds_run = again, rounds_run + 1
    # judged against the last round's targets: what the edited model was last asked to deliver
    v_star = torch.stack([r.tensors["v_star"] for r in last.results]).to(torch.float64)
    k_e_top = torch.stack([r.tensors["k_e"] for r in last.results])
    delta = EditDelta(updates=updates, meta=_meta(values, config, layers, rounds_run))
    if not delta.is_finite():
        raise InsertionRefusedError("the batch update is not finite; lower the learning rate or raise --lambda")
    outcomes, changed = _verify(model, requests, hp, delta, layers, last, v_star, k_e_top)
    solve_s = time.perf_counter() - t0
    check_batch(outcomes, bound, config.mode, changed)
    return BatchInsertResult(delta, config.mode, layers, outcomes, values, bound, lam_abs, solve_s, rounds_run)


def _revalue(model, requests, hp, updates, second_moment, value_kwargs) -> BatchValues:
    """Every request's v* re-optimised on the model with ``updates`` applied (weights restored
    bit-exactly); step events are not streamed again."""
    saved = WeightSnapshot(_linear(model, u.layer) for u in updates)
    try:
        for u in updates:
            add_low_rank(_linear(model, u.layer), u.left, u.right)
        kwargs = {k: v for k, v in value_kwargs.items() if k != "on_step"}
        return compute_values(model, requests, hp, second_moment=second_moment, **kwargs)
    finally:
        saved.restore()


def _merged(first: list[MatrixUpdate], second: list[MatrixUpdate]) -> list[MatrixUpdate]:
    """One update per matrix: the factors of both rounds side by side (W += both)."""
    extra = {u.module: u for u in second}
    out = [MatrixUpdate(u.component, u.module, torch.cat([u.left, extra[u.module].left], 1),
                        torch.cat([u.right, extra[u.module].right], 1), u.layer) if u.module in extra else u
           for u in first]
    seen = {u.module for u in first}
    return out + [u for u in second if u.module not in seen]


def _solve_layers(model, requests, hp, config, layers, base_c, values, preserve_requests):
    adapter = model.adapter
    tmpl = _template_locs(model, requests, hp)
    bare = [locate_all(model.tokenizer, ["{}"], r.prompt, r.subject, adapter.max_length)[0] for r in requests]
    shift = torch.stack([r.tensors["delta"] for r in values.results]).to(torch.float64)
    top = layers[-1]
    flat_t = [p for g in tmpl for p in g]
    if len(layers) > 1:
        target_e = _stream(model, bare, top) + shift
        target_t = _stream(model, flat_t, top).view(len(requests), -1, shift.shape[-1]) + shift[:, None, :]
    saved = WeightSnapshot(_linear(model, layer) for layer in layers)
    updates, lam_abs = [], {}
    try:
        for pos, layer in enumerate(layers):
            left_count = len(layers) - pos
            k_e, k_star = _pair_keys(model, requests, hp, layer, tmpl)
            if len(layers) == 1:  # one layer: both keys' gap is the request's own shift
                gap_e = gap_t = shift
            else:
                gap_e = (target_e - _stream(model, bare, top)) / left_count
                cur_t = _stream(model, flat_t, top).view(len(requests), -1, shift.shape[-1])
                gap_t = (target_t - cur_t).mean(dim=1) / left_count
            keys = torch.cat([k_e, k_star]).to(torch.float64).cpu()
            gaps = torch.cat([gap_e, gap_t])
            c, protected = _protected_c(model, base_c[layer], layer, hp, preserve_requests)
            protected = protected if config.null_space else None
            if config.mode == "sequential":  # per request [k_e, k*] and their gaps, in the batch's order
                f = sequential_factors(c, torch.stack([k_e, k_star], 1), torch.stack([gap_e, gap_t], 1), config.lam,
                                       ridge=hp.ridge, protected=protected, null_space=config.null_space)
            else:
                f = joint_factors(c, keys, gaps, config.lam, ridge=hp.ridge, protected=protected)
            lam_abs[layer] = f.lam_abs
            upd = MatrixUpdate(config.component, adapter.fc2_name(layer), f.left.float(), f.right.float(), layer)
            add_low_rank(_linear(model, layer), upd.left, upd.right)
            updates.append(upd)
    finally:
        saved.restore()
    return updates, lam_abs


def _verify(model, requests, hp, delta, layers, values, v_star, k_e_top) -> tuple[list[RequestOutcome], bool]:
    """Per-request residuals with ``delta`` applied and whether it changed any weight; the weights
    come back bit-exactly."""
    adapter = model.adapter
    top = layers[-1]
    lin = _linear(model, top)
    saved = WeightSnapshot(_linear(model, layer) for layer in layers)
    bare = [locate_all(model.tokenizer, ["{}"], r.prompt, r.subject, adapter.max_length)[0] for r in requests]
    try:
        with torch.no_grad():
            if len(layers) == 1:
                before = (lin(k_e_top.to(lin.weight.device, lin.weight.dtype)).double().cpu() - v_star)
                delta.apply(model)
                after = lin(k_e_top.to(lin.weight.device, lin.weight.dtype)).double().cpu() - v_star
                scale = v_star
            else:
                shift = torch.stack([r.tensors["delta"] for r in values.results]).to(torch.float64)
                target = _stream(model, bare, top) + shift
                before = -shift
                delta.apply(model)
                after = _stream(model, bare, top) - target
                scale = target
            changed = saved.changed()
    finally:
        saved.restore()
    norm = torch.linalg.vector_norm(scale, dim=1).clamp_min(1e-12)
    res = (torch.linalg.vector_norm(after, dim=1) / norm).tolist()
    bef = (torch.linalg.vector_norm(before, dim=1) / norm).tolist()
    return [
        RequestOutcome(residual=res[i], before=bef[i], p_target=r.p_target, steps_run=r.steps_run, early_stopped=r.early_stopped)
        for i, r in enumerate(values.results)
    ], changed


def _meta(values: BatchValues, config: BatchInsertConfig, layers: tuple[int, ...], rounds: int = 1) -> dict[str, str]:
    first = values.results[0].delta.meta
    extra = {"rounds": str(rounds)} if config.rounds > 1 else {}
    return {**extra,
        "kind": "batch",
        "family": first.get("family", ""),
        "insert_mode": config.mode,
        "layers": ",".join(str(x) for x in layers),
        "lambda": repr(config.lam),
        "null_space": str(bool(config.null_space)),
        "n_requests": str(len(values.results)),
        "hparams": first.get("hparams", ""),
        "hparams_fingerprint": first.get("hparams_fingerprint", ""),
    }


def apply_batch(model: Any, requests: Sequence[EditRequest], hparams: ReFACTHParams, config: BatchInsertConfig = BatchInsertConfig(), **kwargs: Any) -> BatchInsertResult:
    """``compute_batch`` + apply its delta (only after verification passed)."""
    result = compute_batch(model, requests, hparams, config, **kwargs)
    result.delta.apply(model)
    return result
