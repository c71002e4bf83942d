"""The value side of the edit (ROME's compute_v): optimise delta so the edited prompts pick the target.

``optimize_value`` (one request; torch Adam; pinned by the parity fixture) and ``optimize_values``
(N requests in one padded batch; Adam written out with per-row state, so each request follows its
single run up to float rounding) both minimise ``engine.methods.refact.loss``.

Speed by construction: layers 0..l run once without gradient for the whole prompt batch; every
step only adds delta to the cached MLP output of layer l at the lookup rows and runs layers
l+1..L-1 and the pooling head (for causal encoders only the positions from the lookup token to
the pooled one, see ``EncoderAdapter.stepper``). Target features are encoded once, frozen.

Vectorised: each request contributes its rewriting prompts as rows of one batch; an (A, H) delta
holds one shift per active request and a row -> request index spreads it over the rows (the adapters'
per-row stepper contract). The per-request losses are summed, so each request's gradient is its own.
Per request: early stop (its delta is snapshotted at the stop step and frozen), norm clamp, step
events and P(target). Converged rows keep being computed until fewer than ``rebuild_at`` of the
built rows are active; then the batch is rebuilt from the active requests alone (row compaction).
Requests are sorted by token length and cut into chunks of at most ``batch`` requests, so padding
stays small and memory stays bounded.

Across processes (``accelerate launch``): the chunks are the unit of sharding (engine.distributed).
A request's v* depends on the chunk it shares (padding width, row compaction and the matmul shapes
change float rounding, ~1e-6), never on the process that computes the chunk. The chunk size never
depends on the number of processes (``batch``, else ``DEFAULT_CHUNK``), so v* is bit-identical on
1 or N processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from engine.adapters.base import EncoderAdapter, LayerState, add_at_positions
from engine.distributed import process_info, require_work_for_all, run_sharded
from engine.errors import EditCancelled
from engine.events import StepCallback, StepEvent, StopCheck
from engine.methods.refact.hparams import ReFACTHParams
from engine.methods.refact.loss import close_pairs, edit_loss, edit_losses, same_token_pairs
from engine.tokens import LocatedText

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
DEFAULT_REBUILD_AT = 0.9
# requests per chunk when the caller sets none: bounds memory, and gives 1,000 requests 32 chunks to
# share over processes; a fixed number, so the bits do not depend on how many processes run
DEFAULT_CHUNK = 32

# (request position in the caller's list, its step event)
BatchStepCallback = Callable[[int, StepEvent], None]


@dataclass
class ValueResult:
    """Outcome of the delta optimisation (delta on the adapter's device)."""

    delta: torch.Tensor
    steps: list[StepEvent] = field(default_factory=list)
    steps_run: int = 0
    optimizer_updates: int = 0
    early_stopped: bool = False
    first_clamped_step: int | None = None  # first step evaluated with a clamped delta
    p_target: float = 0.0


def encode_texts(adapter: EncoderAdapter, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Frozen features of ``texts``: each distinct text encoded once, in one padded batch."""
    unique = list(dict.fromkeys(texts))
    feats = adapter.encode(tokenizer, unique)
    row = {t: i for i, t in enumerate(unique)}
    return feats[torch.tensor([row[t] for t in texts], device=feats.device)]


def lookup_index(located: Sequence[LocatedText], device: torch.device) -> torch.Tensor:
    return torch.tensor([p.index for p in located], device=device)


def shifted_output(state: LayerState, located: Sequence[LocatedText], delta: torch.Tensor) -> torch.Tensor:
    """Layer l's cached MLP output with delta added at each row's lookup token (out of place)."""
    return add_at_positions(state.mlp_out, lookup_index(located, state.mlp_out.device), delta)


def optimize_value(
    adapter: EncoderAdapter,
    tokenizer: Any,
    located: Sequence[LocatedText],
    layer: int,
    targets: torch.Tensor,
    v0: torch.Tensor,
    hparams: ReFACTHParams,
    *,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    state: LayerState | None = None,
    target_texts: Sequence[str] | None = None,
) -> ValueResult:
    """Optimise delta (Adam) for the rewriting prompts ``located``; see the module docstring.

    ``state``: the prefix of ``located`` at ``layer`` when the caller already ran it.
    ``target_texts``: the texts of ``targets``; a target that tokenises like a rewriting prompt is
    scored against that prompt's own unedited feature (engine.methods.refact.loss), as the vectorised path does.
    Loop i = 0..max_steps-1: evaluate; stop if mean P(target) > threshold or i is the last
    step; otherwise update and clamp ||delta|| to clamp_factor * ||v0||.
    """
    with torch.no_grad():
        if state is None:
            state = adapter.prefix(adapter.tokenize(tokenizer, [p.text for p in located]), layer)
        features_of = adapter.stepper(state, lookup_index(located, state.mlp_out.device))
    targets = targets.detach()
    v0 = v0.detach().float()  # v* and Adam's state in fp32 whatever the model's dtype (fp16 rounds eps to 0)
    delta = torch.zeros(adapter.hidden_size, dtype=torch.float32, device=state.mlp_out.device, requires_grad=True)
    anchors = None
    pairs = same_token_pairs(adapter, tokenizer, [p.text for p in located], target_texts)
    if pairs is not None:
        with torch.no_grad():
            unedited = features_of(torch.zeros_like(delta))
            pairs = close_pairs(pairs, unedited, targets)
        anchors = None if pairs is None else (pairs, unedited)
    opt = torch.optim.Adam([delta], lr=hparams.lr, betas=(0.9, 0.999), eps=1e-8)
    max_norm = hparams.clamp_factor * torch.norm(v0)
    result = ValueResult(delta=delta)
    start = time.perf_counter()
    for step in range(hparams.max_steps):
        if should_stop is not None and should_stop():
            raise EditCancelled(f"edit cancelled at step {step}; the model was not changed")
        delta_norm = float(torch.norm(delta.detach()))
        features = features_of(delta)
        loss, nll, wd, p_target = edit_loss(features, targets, delta, v0, hparams, anchors)
        event = StepEvent(
            step=step,
            loss=float(loss.detach()),
            nll=float(nll.detach()),
            wd=float(wd.detach()),
            p_target=float(p_target.detach()),
            delta_norm=delta_norm,
            elapsed=time.perf_counter() - start,
        )
        result.steps.append(event)
        result.steps_run = step + 1
        result.p_target = event.p_target
        if on_step is not None:
            on_step(event)
        if event.p_target > hparams.prob_threshold:
            result.early_stopped = True
            break
        if step == hparams.max_steps - 1:
            break
        opt.zero_grad(set_to_none=True)
        # inputs=[delta]: no gradient is computed for, or accumulated on, the encoder's weights
        loss.backward(inputs=[delta])
        opt.step()
        result.optimizer_updates += 1
        with torch.no_grad():
            if torch.norm(delta) > max_norm:
                delta[...] = delta * max_norm / torch.norm(delta)
                if result.first_clamped_step is None:
                    result.first_clamped_step = step + 1
    result.delta = delta.detach().clone()
    return result


@dataclass
class ValueTask:
    """One request's inputs to the value optimisation (as ``optimize_value`` takes them)."""

    located: Sequence[LocatedText]
    targets: torch.Tensor  # (X, D); column 0 is the target text
    v0: torch.Tensor  # (H)
    target_texts: Sequence[str] | None = None  # the texts of ``targets`` (see engine.methods.refact.loss)


@dataclass
class BatchStats:
    """How the batch ran: chunks, rebuilds and evaluated prompt rows (the cost that matters)."""

    chunks: int = 0
    rebuilds: int = 0
    row_steps: int = 0
    token_steps: int = 0
    seconds: float = 0.0
    chunk_size: int = 0  # requests per chunk (the unit sharded across processes)
    processes: int = 1

    def add(self, other: "BatchStats") -> None:
        self.chunks += other.chunks
        self.rebuilds += other.rebuilds
        self.row_steps += other.row_steps
        self.token_steps += other.token_steps


@dataclass
class BatchValueResult:
    """Per-request results in the caller's order, plus batch statistics."""

    values: list[ValueResult]
    stats: BatchStats = field(default_factory=BatchStats)


def _adam_update(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, lr: float
) -> None:
    """torch.optim.Adam's single-tensor update (betas 0.9/0.999, eps 1e-8), row-wise state, in place."""
    beta1, beta2 = ADAM_BETAS
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(ADAM_EPS)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class _Built:
    """The padded batch of ``members`` (request positions): stepper, row index, padded targets."""

    def __init__(self, adapter: EncoderAdapter, tokenizer: Any, tasks: Sequence[ValueTask], members: list[int], layer: int,
                 pairs: Sequence[torch.Tensor | None] = ()):
        self.members = members
        self.per = len(tasks[members[0]].located)
        located = [p for i in members for p in tasks[i].located]
        batch = adapter.tokenize(tokenizer, [p.text for p in located])
        device = adapter.device
        with torch.no_grad():
            state = adapter.prefix(batch, layer)
            index = torch.tensor([p.index for p in located], device=state.mlp_out.device)
            self.features_of = adapter.stepper(state, index)
        self.row_req = torch.arange(len(members), device=device).repeat_interleave(self.per)
        width = max(int(tasks[i].targets.shape[0]) for i in members)
        dim = int(tasks[members[0]].targets.shape[-1])
        targets = torch.zeros(len(members), width, dim, dtype=tasks[members[0]].targets.dtype, device=device)
        valid = torch.zeros(len(members), width, dtype=torch.bool, device=device)
        for j, i in enumerate(members):
            x = tasks[i].targets.shape[0]
            targets[j, :x] = tasks[i].targets.detach().to(device)
            valid[j, :x] = True
        self.row_targets = targets[self.row_req]
        self.row_valid = valid[self.row_req]
        # targets that are a row's own prompt: scored against the row's unedited feature in this batch
        self.anchors = None
        if pairs and any(pairs[i] is not None for i in members):
            mask = torch.zeros(len(located), width, dtype=torch.bool)
            for j, i in enumerate(members):
                if pairs[i] is not None:
                    mask[j * self.per:(j + 1) * self.per, : pairs[i].shape[1]] = pairs[i]
            with torch.no_grad():
                unedited = self.features_of(torch.zeros(len(located), adapter.hidden_size,
                                                        dtype=state.mlp_out.dtype, device=device))
                kept = close_pairs(mask.to(device), unedited, self.row_targets)
            self.anchors = None if kept is None else (kept, unedited)
        self.tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())


def _sort_by_length(tasks: Sequence[ValueTask]) -> list[int]:
    return sorted(range(len(tasks)), key=lambda i: (max(p.length for p in tasks[i].located), i))


def optimize_values(
    adapter: EncoderAdapter,
    tokenizer: Any,
    tasks: Sequence[ValueTask],
    layer: int,
    hparams: ReFACTHParams,
    *,
    batch: int | None = None,
    rebuild_at: float = DEFAULT_REBUILD_AT,
    on_step: BatchStepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> BatchValueResult:
    """Optimise one delta per task, vectorised; results in ``tasks`` order.

    Every task must have the same number of rewriting prompts (one ``hparams``). ``batch`` caps the
    requests per padded batch (None: ``DEFAULT_CHUNK``); chunks are shared over the processes of an
    ``accelerate launch`` (ShardingError when there are more processes than tasks); ``rebuild_at``: rebuild the batch when at most
    this fraction of its rows is still active.
    """
    if not tasks:
        return BatchValueResult(values=[])
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    per = {len(t.located) for t in tasks}
    if len(per) != 1:
        raise ValueError("every request of a batch needs the same number of rewriting prompts (one template set)")
    world = process_info()[1]
    require_work_for_all(len(tasks), "requests")
    order = _sort_by_length(tasks)
    size = batch or DEFAULT_CHUNK
    chunks = [order[c : c + size] for c in range(0, len(order), size)]
    pairs = [same_token_pairs(adapter, tokenizer, [p.text for p in t.located], t.target_texts) for t in tasks]
    start = time.perf_counter()

    def run(chunk: list[int]) -> tuple[list[ValueResult], BatchStats]:
        part: list[ValueResult | None] = [None] * len(tasks)
        part_stats = BatchStats(chunks=1)
        _run_chunk(adapter, tokenizer, tasks, chunk, layer, hparams, part, part_stats, rebuild_at, on_step,
                   should_stop, pairs)
        done = [part[i] for i in chunk]
        if world > 1:  # results cross processes on the CPU (a CUDA tensor would unpickle on its own GPU)
            for r in done:
                r.delta = r.delta.cpu()
        return done, part_stats

    results: list[ValueResult | None] = [None] * len(tasks)
    stats = BatchStats(chunk_size=size, processes=world)
    for chunk, (done, part_stats) in zip(chunks, run_sharded(chunks, run)):
        stats.add(part_stats)
        for i, r in zip(chunk, done):
            r.delta = r.delta.to(adapter.device)
            results[i] = r
    stats.seconds = time.perf_counter() - start
    return BatchValueResult(values=[r for r in results if r is not None], stats=stats)


def _run_chunk(
    adapter: EncoderAdapter,
    tokenizer: Any,
    tasks: Sequence[ValueTask],
    chunk: list[int],
    layer: int,
    hparams: ReFACTHParams,
    results: list[ValueResult | None],
    stats: BatchStats,
    rebuild_at: float,
    on_step: BatchStepCallback | None,
    should_stop: StopCheck | None,
    pairs: Sequence[torch.Tensor | None] = (),
) -> None:
    device = adapter.device
    dtype = torch.float32  # v* and Adam's state in fp32 whatever the model's dtype
    n = len(chunk)
    pos = {req: j for j, req in enumerate(chunk)}  # request -> row of the chunk's state tensors
    v0 = torch.stack([tasks[i].v0.detach().to(device, dtype) for i in chunk])
    v0_sq = torch.stack([torch.norm(v0[j]) ** 2 for j in range(n)])
    max_norm = torch.stack([hparams.clamp_factor * torch.norm(v0[j]) for j in range(n)])
    delta = torch.zeros(n, adapter.hidden_size, dtype=dtype, device=device)
    exp_avg, exp_avg_sq = torch.zeros_like(delta), torch.zeros_like(delta)
    for i in chunk:
        results[i] = ValueResult(delta=delta[pos[i]])
    done: set[int] = set()
    built = _Built(adapter, tokenizer, tasks, list(chunk), layer, pairs)
    stats.rebuilds += 1
    t0 = time.perf_counter()
    for step in range(hparams.max_steps):
        if should_stop is not None and should_stop():
            raise EditCancelled(f"batch cancelled at step {step}; the model was not changed")
        live = [i for i in built.members if i not in done]
        rows = torch.tensor([pos[i] for i in built.members], device=device)
        d = delta[rows].clone().requires_grad_(True)
        features = built.features_of(d[built.row_req])
        loss, nll, wd, p_target = edit_losses(features, built.row_targets, built.row_valid, built.per, d, v0_sq[rows],
                                              hparams, built.anchors)
        stats.row_steps += built.row_req.shape[0]
        stats.token_steps += built.tokens
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            norms = torch.linalg.vector_norm(d, dim=1).tolist()
        loss_l, nll_l, wd_l, p_l = loss.tolist(), nll.tolist(), wd.tolist(), p_target.tolist()
        member_row = {req: j for j, req in enumerate(built.members)}
        finished: list[int] = []
        for req in live:
            j = member_row[req]
            event = StepEvent(step=step, loss=loss_l[j], nll=nll_l[j], wd=wd_l[j], p_target=p_l[j], delta_norm=norms[j], elapsed=elapsed)
            res = results[req]
            res.steps.append(event)
            res.steps_run = step + 1
            res.p_target = event.p_target
            if on_step is not None:
                on_step(req, event)
            if event.p_target > hparams.prob_threshold:
                res.early_stopped = True
                finished.append(req)
            elif step == hparams.max_steps - 1:
                finished.append(req)
        for req in finished:  # snapshot at the stop step: later updates of others never touch it
            results[req].delta = delta[pos[req]].clone()
            done.add(req)
        still = [req for req in live if req not in done]
        if not still:
            break
        # only the live requests' losses enter the gradient; each one's gradient is its own
        live_rows = torch.tensor([member_row[r] for r in still], device=device)
        loss[live_rows].sum().backward(inputs=[d])
        grad = d.grad[live_rows]
        upd = torch.tensor([pos[r] for r in still], device=device)
        with torch.no_grad():
            p, m, v = delta[upd], exp_avg[upd], exp_avg_sq[upd]
            _adam_update(p, grad, m, v, step + 1, hparams.lr)
            for k, req in enumerate(still):
                norm = torch.norm(p[k])
                if norm > max_norm[pos[req]]:
                    p[k] = p[k] * max_norm[pos[req]] / torch.norm(p[k])
                    if results[req].first_clamped_step is None:
                        results[req].first_clamped_step = step + 1
                results[req].optimizer_updates += 1
            delta[upd], exp_avg[upd], exp_avg_sq[upd] = p, m, v
        if len(still) <= rebuild_at * len(built.members):
            built = _Built(adapter, tokenizer, tasks, still, layer, pairs)
            stats.rebuilds += 1
