"""The value side of the edit: optimise delta so the edited prompts' features pick the target text.

Speed by construction: layers 0..l run once without gradient for the whole prompt batch; every
step only adds delta to the cached MLP output of layer l at the lookup rows and runs layers
l+1..L-1 and the pooling head (for causal encoders only the positions from the lookup token to
the pooled one, see ``EncoderAdapter.stepper``). Target features are encoded once, frozen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from engine.adapters.base import EncoderAdapter, LayerState, add_at_positions
from engine.errors import EditCancelled
from engine.events import StepCallback, StepEvent, StopCheck
from engine.hparams import ReFACTHParams
from engine.self_targets import anchor_scores, close_pairs, same_token_pairs
from engine.tokens import LocatedText

COSINE_SCALE = 100.0  # CLIP's logit scale, exp(log 100)


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


def similarity(features: torch.Tensor, targets: torch.Tensor, hparams: ReFACTHParams,
               anchors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """s_ij between edited features (P x D) and target features (X x D), divided by the temperature.

    ``anchors`` (pairs (P x X) bool, unedited features (P x D)): targets that are the prompt itself,
    scored against the prompt's own unedited feature (engine.self_targets)."""
    if hparams.similarity == "cosine":
        f = torch.nn.functional.normalize(features, dim=-1)
        t = torch.nn.functional.normalize(targets, dim=-1)
        scores = COSINE_SCALE * f @ t.T
    else:
        scores = -torch.linalg.vector_norm(features[:, None, :] - targets[None, :, :], dim=-1)
    if anchors is not None:
        scores = anchor_scores(scores, features, anchors[1], anchors[0], hparams.similarity)
    return scores / hparams.temperature


def edit_loss(
    features: torch.Tensor, targets: torch.Tensor, delta: torch.Tensor, v0: torch.Tensor, hparams: ReFACTHParams,
    anchors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, nll, wd, mean P(target)); target is column 0 of ``targets``."""
    log_p = torch.log_softmax(similarity(features, targets, hparams, anchors), dim=-1)[:, 0]
    nll = -log_p.mean()
    # Plain norm over squared norm (ROME's form); torch.norm has gradient 0 at delta = 0.
    wd = hparams.weight_decay * torch.norm(delta) / torch.norm(v0) ** 2
    return nll + wd, nll, wd, log_p.exp().mean()


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
    scored against that prompt's own unedited feature (engine.self_targets), as the vectorised path does.
    Loop i = 0..max_steps-1: evaluate; stop if mean P(target) > threshold or i is the last
    step; otherwise update and clamp ||delta|| to clamp_factor * ||v0||.
    """
    with torch.no_grad():
        if state is None:
            state = adapter.prefix(adapter.tokenize(tokenizer, [p.text for p in located]), layer)
        features_of = adapter.stepper(state, lookup_index(located, state.mlp_out.device))
    targets = targets.detach()
    v0 = v0.detach()
    delta = torch.zeros(adapter.hidden_size, dtype=state.mlp_out.dtype, device=state.mlp_out.device, requires_grad=True)
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
