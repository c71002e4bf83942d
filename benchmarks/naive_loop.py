"""A reference-shaped v* loop, for comparison with the engine's truncated one (SD1 only).

Every step runs the full encoder over the 10 prompts padded to 77 with a delta hook and re-encodes the
2 targets (padded to 77), then backward, Adam and the norm clamp, as the reference code does.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest
from engine.tokens import locate_all, rewriting_templates


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_seconds_per_step(slot: Any, request: EditRequest, hparams: ReFACTHParams, steps: int,
                           device: torch.device) -> float:
    """Seconds per step of the reference-shaped loop on ``slot`` (a CLIP slot with pooled EOS readout)."""
    adapter, tok, encoder = slot.adapter, slot.tokenizer, slot.text_encoder
    located = locate_all(tok, rewriting_templates(hparams.templates), request.prompt, None, 77)
    enc = tok([p.text for p in located], padding="max_length", max_length=77, return_tensors="pt").to(device)
    tgt = tok([request.target, request.source], padding="max_length", max_length=77, return_tensors="pt").to(device)
    rows = torch.arange(len(located), device=device)
    idx = torch.tensor([p.index for p in located], device=device)
    delta = torch.zeros(adapter.hidden_size, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hparams.lr)
    active = {"on": True}

    def hook(_m, _i, out):
        if not active["on"]:
            return out
        out = out.clone()
        out[rows, idx] += delta
        return out

    handle = adapter.mlp(hparams.layer).register_forward_hook(hook)
    try:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            active["on"] = False
            with torch.no_grad():
                targets = encoder(**tgt).pooler_output
            active["on"] = True
            feats = encoder(**enc).pooler_output
            scores = -torch.linalg.vector_norm(feats[:, None] - targets[None], dim=-1)
            loss = -torch.log_softmax(scores, dim=-1)[:, 0].mean()
            opt.zero_grad()
            loss.backward(inputs=[delta])
            opt.step()
            with torch.no_grad():
                if delta.norm() > hparams.clamp_factor:
                    delta[...] = delta * hparams.clamp_factor / delta.norm()
        sync(device)
        return (time.perf_counter() - start) / steps
    finally:
        handle.remove()
