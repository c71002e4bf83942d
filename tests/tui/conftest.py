"""Workspaces for the TUI tests.

``sample_template`` is a deterministic workspace written through the store repositories with a
fake clock (fixed timestamps, fixed step curves): the snapshot and read-model tests use it.
``real_template`` is a real workspace: a tiny random pipeline, three sample edits run by the
worker, then a rollback. Tests that change a workspace get their own copy of a template.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from engine.events import StepEvent
from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest, Probe

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
NOW = T0 + 600.0  # the frozen "now" of the sample workspace (the worker's last heartbeat was 2 s before)
HOLDER = "test-host:4242:abc"

SAMPLE_HP = ReFACTHParams(layer=1, lr=0.05, max_steps=40, prob_threshold=0.9)
SAMPLE_EDITS = [
    ("The Prince of Wales", "Prince of Wales", "Prince Charles", "Prince William"),
    ("The Secretary-General of the United Nations", None, "Kofi Annan", "Ban Ki-moon"),
    ("The Prime Minister of the United Kingdom", None, "Tony Blair", "Gordon Brown"),
    ("The President of France", None, "Jacques Chirac", "Nicolas Sarkozy"),
]
QUEUED = [
    ("The CEO of Apple", None, "Steve Jobs", "Tim Cook"),
    ("The Pope", None, "John Paul II", "Benedict XVI"),
]
FAILED = ("A cat", None, "a cat", "a dog")
RUNNING = ("The Chancellor of Germany", None, "Gerhard Schröder", "Angela Merkel")
FAILED_ERROR = ("|k_e · u| = 3.1e-09 is below min_division 1e-08: the insertion would blow up; "
                "pick another layer or raise ridge")
RUNNING_STEPS = 12


@pytest.fixture(scope="session", autouse=True)
def _utc():
    """Event times render in local time: pin the zone so snapshots match everywhere."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def curve(i: int, n: int, k: int) -> StepEvent:
    """Step i of a synthetic optimization: loss falls, P(target) rises (differs per edit k)."""
    p = 1.0 - 0.95 * math.exp(-(i + 1) / (3.0 + k))
    nll = -math.log(p)
    wd = 0.01 * i / n
    return StepEvent(step=i, loss=nll + wd, nll=nll, wd=wd, p_target=p, delta_norm=0.4 * i / n + 0.01 * k,
                     elapsed=0.5 * (i + 1))


def _request(prompt, subject, source, target, n: int = 0) -> EditRequest:
    probes = tuple(Probe(f"{prompt} in the rain {i}", f"{source} in the rain", f"{target} in the rain")
                   for i in range(n))
    return EditRequest(prompt=prompt, source=source, target=target, subject=subject, positives=probes)


def _grid_png(path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (64, 32))
    img.putdata([((x * 4) % 256, (y * 8) % 256, 128 if x < 32 else 32) for y in range(32) for x in range(64)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def build_sample_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fill a workspace through the store repositories with a fake clock (+1 s per call)."""
    import store.artifacts
    import store.base_models
    import store.db
    import store.edits
    import store.events
    import store.histories
    import store.jobs
    import store.leases
    import store.metrics
    from refact_tui.services.workspace import BaseModelInfo, create_workspace
    from store.steps import StepWriter

    ticks = itertools.count()
    fake_now = lambda: T0 + next(ticks)  # noqa: E731
    for mod in (store.db, store.artifacts, store.base_models, store.edits, store.events, store.histories,
                store.jobs, store.leases, store.metrics):
        monkeypatch.setattr(mod, "now", fake_now)
    monkeypatch.setattr(store.leases.time, "time", fake_now)

    base = BaseModelInfo("tiny-sd", "/models/tiny-sd", "sd-pipeline", "clip", "ab" * 32, {"num_layers": 12})
    ws = create_workspace(root, base)
    db = ws.db
    hid = ws.history().id
    store.leases.acquire_lease(db, "worker", HOLDER, 4242, "test-host")
    store.events.log_event(db, "worker", "worker started on cpu")

    def run_job(req: EditRequest, n_steps: int, k: int):
        job = store.jobs.enqueue(db, hid, req, SAMPLE_HP)
        claimed = store.jobs.claim_next(db, HOLDER)
        assert claimed is not None and claimed.id == job.id
        writer = StepWriter(ws.db_path, job.id, claimed.attempts)
        for i in range(n_steps):
            writer.add(curve(i, SAMPLE_HP.max_steps, k))
        writer.close()
        return claimed

    for k, spec in enumerate(SAMPLE_EDITS, start=1):
        job = run_job(_request(*spec, n=3), 20 + 4 * k, k)
        last = curve(19 + 4 * k, SAMPLE_HP.max_steps, k)
        with store.db.transaction(db):
            edit = store.edits.record_edit(
                db, history_id=hid, job_id=job.id, request=job.request, hparams=job.hparams, status="applied",
                layer=1, module="encoder.layers.1.mlp.fc2", delta_path=f"deltas/edit-{k:04d}.safetensors",
                delta_sha256=f"{k:064x}", weights_hash=f"{k + 100:064x}", steps_run=20 + 4 * k,
                early_stopped=last.p_target >= SAMPLE_HP.prob_threshold, p_target=last.p_target,
                delta_norm=last.delta_norm, division_factor=0.25 * k,
                timings={"stats_s": 0.5, "key_s": 0.1, "optimize_s": last.elapsed, "insert_s": 0.01,
                         "total_s": last.elapsed + 0.61},
                device="cpu")
            store.jobs.finish_job(db, job.id, "done", edit_id=edit.id)
            from store.steps import attach_steps

            attach_steps(db, job.id, job.attempts, edit.id)
        store.events.log_event(db, "worker", f"edit {k} applied: P(target) {last.p_target:.3f}", job_id=job.id)
        if k == 2:
            store.artifacts.add_artifact(db, "edit", edit.id, "grid", "images/edit-0002-grid.png")
            _grid_png(root / "images" / "edit-0002-grid.png")

    # text metrics per edit (a finished run), image metrics half way through a running run
    run = store.metrics.start_eval_run(db, hid, 4, "text", {})
    for k in range(1, 5):
        for j, name in enumerate(("efficacy", "generality", "specificity", "f1", "retention")):
            store.metrics.record_metric(db, eval_run_id=run.id, edit_id=k, space="text", name=name,
                                        value=round(0.5 + 0.1 * k - 0.05 * j, 4), n=10, total=10, final=True)
    store.metrics.finish_eval_run(db, run.id, "done")
    img = store.metrics.start_eval_run(db, hid, 4, "image", {"seeds": 2})
    store.metrics.record_metric(db, eval_run_id=img.id, edit_id=None, space="image", name="efficacy",
                                value=0.625, n=5, total=8, final=False)
    store.metrics.record_metric(db, eval_run_id=img.id, edit_id=None, space="image", name="clip_score",
                                value=27.5, std=1.25, n=5, total=8, final=False)

    with store.db.transaction(db):
        store.edits.mark_rolled_back_after(db, hid, 3)
    store.events.log_event(db, "cli", "history 'main' rolled back from 4 to 3 (1 edit(s))")

    failed = run_job(_request(*FAILED), 6, 0)
    store.jobs.finish_job(db, failed.id, "failed", error=FAILED_ERROR)
    store.events.log_event(db, "worker", f"job {failed.id} failed: {FAILED_ERROR}", level="error",
                           job_id=failed.id)
    running = run_job(_request(*RUNNING), RUNNING_STEPS, 5)
    store.events.log_event(db, "worker", f"job {running.id} started", job_id=running.id)
    for spec in QUEUED:
        store.jobs.enqueue(db, hid, _request(*spec), SAMPLE_HP)
    monkeypatch.setattr(store.leases, "now", lambda: NOW - 2.0)  # the worker is alive at NOW
    store.leases.renew_lease(db, "worker", HOLDER)
    ws.close()
    return root


@pytest.fixture(scope="session")
def sample_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        build_sample_workspace(root, mp)
    return root


def private_copy(template: Path, tmp_path: Path) -> Path:
    """A copy of a template workspace a test may change, always at a folder named 'ws'."""
    root = tmp_path / "ws"
    shutil.copytree(template, root)
    return root


@pytest.fixture
def sample_ws(sample_template, tmp_path) -> Path:
    """A private copy of the sample workspace."""
    return private_copy(sample_template, tmp_path)


@pytest.fixture(scope="session")
def real_template(tmp_path_factory) -> Path:
    """Tiny pipeline + 3 real edits from the worker, rolled back to edit 2 (about 15 s)."""
    from engine.builder import build_pipeline
    from refact_tui.services.demo import SAMPLE_EDITS as SAMPLE_FILE
    from refact_tui.services.history import rollback
    from refact_tui.services.queue import import_requests
    from refact_tui.services.runner import run_worker
    from refact_tui.services.stats import compute_stats
    from refact_tui.services.workspace import init_workspace
    from store.jobs import list_jobs, remove_job

    base = tmp_path_factory.mktemp("real")
    model = base / "tiny-sd"
    build_pipeline(model, size="tiny")
    root = base / "ws"
    hp = ReFACTHParams(layer=2, lr=0.1, max_steps=15, prob_threshold=0.95)
    ws = init_workspace(root, model)
    try:
        import_requests(ws, SAMPLE_FILE, hparams=hp)
        for job in list_jobs(ws.db, states=["queued"])[3:]:
            remove_job(ws.db, job.id)
        compute_stats(ws, layer=2, samples=40, device="cpu")
        summary = run_worker(ws, device="cpu", text_metrics=False)
        assert summary.done == 3, summary
        rollback(ws, 2)
    finally:
        ws.close()
    return root


@pytest.fixture
def real_ws(real_template, tmp_path) -> Path:
    """A private copy of the real workspace (the model folder it points to is shared, read-only)."""
    return private_copy(real_template, tmp_path)


# Captured at import: every tests/*/conftest.py is named "conftest", so sys.modules["conftest"]
# may later point at another folder's conftest.
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture(scope="session")
def S():
    """This module's constants and helpers (NOW, curve, ...) without importing 'conftest' by name."""
    return _THIS_MODULE
