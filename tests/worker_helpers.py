"""Helpers shared by the worker / history / export / CLI tests: a tiny workspace with fast hparams."""

from __future__ import annotations

import json
from pathlib import Path

from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EDITS = REPO / "datasets" / "sample_edits.jsonl"
# Layer 2 of the 4-layer tiny encoder, few steps: each edit takes a fraction of a second.
FAST = ReFACTHParams(layer=2, lr=0.2, max_steps=8, prob_threshold=0.999)
STATS_SAMPLES = 40


def sample_requests(n: int) -> list[EditRequest]:
    lines = [l for l in SAMPLE_EDITS.read_text(encoding="utf-8").splitlines() if l.strip()]
    return [EditRequest.from_dict(json.loads(l)) for l in lines[:n]]


def new_workspace(root: Path, model_dir: Path):
    """An initialized workspace that computes C from a small corpus sample."""
    from refact_tui.services.runner import STATS_SAMPLES_KEY
    from refact_tui.services.workspace import init_workspace
    from store.db import set_meta

    ws = init_workspace(root, model_dir)
    set_meta(ws.db, STATS_SAMPLES_KEY, str(STATS_SAMPLES))
    return ws


def queue(ws, requests, hparams: ReFACTHParams = FAST) -> list:
    from refact_tui.services.queue import add_edit

    return [add_edit(ws, r, hparams) for r in requests]


def spy_batch_preserve(monkeypatch) -> list[list[str]]:
    """Record, per batch the worker computes, the prompts of the earlier requests it protects."""
    import refact_tui.services.batch_worker as bw

    seen: list[list[str]] = []
    real = bw.compute_outcome

    def spy(model, requests, hparams, context):
        seen.append([r.prompt for r in context.preserve])
        return real(model, requests, hparams, context)

    monkeypatch.setattr(bw, "compute_outcome", spy)
    return seen


def workspace_with_edits(root: Path, model_dir: Path, n: int, on_event=None):
    """A new workspace after the worker applied the first ``n`` sample edits: (ws, jobs, summary)."""
    from refact_tui.services.runner import run_worker

    ws = new_workspace(root, model_dir)
    jobs = queue(ws, sample_requests(n))
    summary = run_worker(ws, device="cpu", on_event=on_event)
    assert summary.done == n
    return ws, jobs, summary


def rebuild_hash(model_dir: Path, delta_paths: list[Path]) -> str:
    """Encoder hash of base + deltas, recomputed without the workspace code."""
    from engine.delta import EditDelta
    from engine.models import load_model

    model = load_model(model_dir, device="cpu", with_pipeline=False)
    for p in delta_paths:
        EditDelta.load(p).apply(model)
    return model.encoder_hash()


def jobs_at(root: Path) -> list:
    """Every job of the workspace at ``root``, read through a connection of its own."""
    from store.db import open_db
    from store.jobs import list_jobs

    db = open_db(root / "refact.db")
    try:
        return list_jobs(db)
    finally:
        db.close()
