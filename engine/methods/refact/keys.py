"""The key side of the edit (ROME's compute_u): keys k at the edited fc2's input and u = C^-1 k*.

- k_e, v_e: fc2 input and MLP output at the bare prompt's lookup token (where v* is inserted);
- k*: the mean key over the context templates (the bare prompt when there are none);
- u = C^-1 k* / ||C^-1 k*||, one Cholesky solve (one column per request);
- earlier-edit keys (--preserve): k_e and k* of earlier requests, folded into C.
Every function takes N prompts or requests; a single edit is N = 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from engine.adapters.base import EncoderAdapter
from engine.errors import InsertionRefusedError
from engine.methods.refact.hparams import ReFACTHParams
from engine.methods.refact.linalg import solve
from engine.request import EditRequest
from engine.tokens import LocatedText, locate_all

KEY_CHUNK = 256  # prompts per padded forward when reading keys


@torch.no_grad()
def keys_at(adapter: EncoderAdapter, tokenizer: Any, located: Sequence[LocatedText], layer: int) -> torch.Tensor:
    """fc2 input at each prompt's lookup token, one padded batch (rows x key_size)."""
    batch = adapter.tokenize(tokenizer, [p.text for p in located])
    key = adapter.prefix(batch, layer, with_output=False).key
    rows = torch.arange(len(located), device=key.device)
    idx = torch.tensor([p.index for p in located], device=key.device)
    return key[rows, idx]


def chunked_keys(adapter: Any, tokenizer: Any, located: Sequence[LocatedText], layer: int) -> torch.Tensor:
    """``keys_at`` in padded batches of at most KEY_CHUNK prompts."""
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


def _check_width(second_moment: torch.Tensor, width: int) -> None:
    if tuple(second_moment.shape) != (width, width):
        raise InsertionRefusedError(
            f"second moment is {tuple(second_moment.shape)} but the key has {width} entries; "
            "recompute the statistics for this layer"
        )


def left_vector(second_moment: torch.Tensor, k_star: torch.Tensor, ridge: float = 0.0, rank: int = 0) -> torch.Tensor:
    """u = C^-1 k* / ||C^-1 k*|| by a float64 Cholesky solve (no explicit inverse), as float32.

    ``ridge`` adds ``ridge * mean(diag C)`` to the diagonal first; ``rank`` > 0 solves against C's
    low-rank + diagonal approximation instead (engine.methods.refact.linalg). A C that is not positive
    definite (too few corpus tokens, dead units) raises InsertionRefusedError.
    """
    k = k_star.detach().to(device="cpu", dtype=torch.float64).reshape(-1, 1)
    _check_width(second_moment, k.shape[0])
    u = solve(second_moment, k, ridge, rank).reshape(-1)
    norm = torch.linalg.vector_norm(u)
    if not torch.isfinite(norm) or norm == 0:
        raise InsertionRefusedError("C^-1 k* is zero or not finite; check the statistics and the key")
    return (u / norm).to(torch.float32)


def left_vectors(second_moment: torch.Tensor, k_star: torch.Tensor, ridge: float, rank: int = 0) -> torch.Tensor:
    """u_i = C^-1 k*_i / ||C^-1 k*_i|| for rows of ``k_star`` (one factor, one multi-column solve)."""
    k = k_star.detach().to("cpu", torch.float64).T
    _check_width(second_moment, k.shape[0])
    u = solve(second_moment, k, ridge, rank)
    norms = torch.linalg.vector_norm(u, dim=0)
    if not torch.isfinite(norms).all() or bool((norms == 0).any()):
        raise InsertionRefusedError("C^-1 k* is zero or not finite for a request of the batch; check the statistics")
    return (u / norms).T.to(torch.float32)


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


def with_earlier_keys(model: Any, second_moment: torch.Tensor, hparams: ReFACTHParams,
                      preserve_requests: Sequence[EditRequest]) -> torch.Tensor:
    """C + preserve * sum k_p k_p^T over the earlier requests' keys (C itself when preserve is 0 or none),
    in C's storage dtype (an fp32 C at an LLM width stays fp32: no second fp64 copy of it)."""
    if hparams.preserve > 0 and preserve_requests:
        earlier = earlier_keys(model, preserve_requests, hparams)
        return second_moment + (hparams.preserve * earlier.T @ earlier).to(second_moment.dtype)
    return second_moment
