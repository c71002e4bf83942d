"""Runs the queue worker on a workspace (the `refact run` use-case, also used by the TUI and demo)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from engine.events import StepEvent, StopCheck
from refact_tui.services.worker import (
    EventCallback,
    JobFailed,
    JobFinished,
    JobStarted,
    Worker,
    WorkerConfig,
    WorkerEvent,
    WorkerNotice,
    WorkerSummary,
)

__all__ = [
    "JobFailed", "JobFinished", "JobStarted", "StepEvent", "WorkerEvent", "WorkerNotice", "WorkerSummary",
    "run_worker", "stop_on_signals", "stats_settings", "lease_timing", "STATS_CORPUS_KEY", "STATS_SAMPLES_KEY",
    "LEASE_STALE_ENV",
]

# Workspace-wide covariance settings (written by `refact stats compute`, read by the worker).
STATS_CORPUS_KEY = "stats.corpus"
STATS_SAMPLES_KEY = "stats.samples"
# Seconds without a heartbeat after which another worker may take the lease over (tests and the crash
# campaign make it small); the heartbeat runs four times per period.
LEASE_STALE_ENV = "REFACT_LEASE_STALE_AFTER"


def lease_timing() -> tuple[float, float]:
    """(lease_stale_after, heartbeat_interval) from $REFACT_LEASE_STALE_AFTER (default 30 s)."""
    import os

    from engine.errors import EngineError

    raw = os.environ.get(LEASE_STALE_ENV, "").strip()
    try:
        stale = float(raw) if raw else 30.0
    except ValueError:
        stale = -1.0
    if not 0.2 <= stale <= 86400:
        raise EngineError(f"{LEASE_STALE_ENV}={raw!r} is not a number of seconds in 0.2..86400; unset it or fix it")
    return stale, min(2.0, stale / 4)


def db_path(ws) -> Path:
    """The workspace database file."""
    return Path(getattr(ws, "db_path", None) or Path(ws.root) / "refact.db")


def stats_settings(ws) -> tuple[Path | None, int | None]:
    """(corpus, n_samples) the workspace uses for second moments (None = library defaults)."""
    from store.db import get_meta

    corpus = get_meta(ws.db, STATS_CORPUS_KEY)
    samples = get_meta(ws.db, STATS_SAMPLES_KEY)
    return (Path(corpus) if corpus else None), (int(samples) if samples else None)


def _text_metrics_hook(ws) -> Callable:
    """After each edit: services.evaluation.record_text_metrics(ws, model, edit_row)."""

    def hook(model, edit) -> None:
        from refact_tui.services.evaluation import record_text_metrics  # torch-heavy: only once an edit ran

        record_text_metrics(ws, model, edit)

    return hook


def check_run_options(ws, device: str = "auto", batch=None, dtype: str | None = None,
                      memory=None) -> None:
    """Every `run` option, before any job is claimed and whether or not the queue holds jobs: the device,
    the load dtype (``--dtype``, else the workspace default) and that the device runs it, the batch
    settings, ``--layers`` against the base model of the current history and of every history with
    queued jobs (the readout-aware range a single edit's layer is held to), and the free memory of the
    device against those models' memory plan (``memory``: a services.plan.MemorySource, for tests).
    One-line HParamsError / EngineError."""
    from engine.models import resolve_device
    from refact_tui.services.plan import EDIT, batch_activity
    from refact_tui.services.preflight import check_dtype, preflight
    from store.base_models import get_base_model
    from store.histories import get_history
    from store.jobs import list_jobs

    resolve_device(device)
    check_dtype(dtype, device)
    if batch is not None:
        batch.validate()
    histories = {ws.history().id} | {j.history_id for j in list_jobs(ws.db, states=("queued",))}
    bases = {get_history(ws.db, h).base_model_id for h in histories}
    if batch is not None:
        for base_id in sorted(bases):
            batch.check_layers(get_base_model(ws.db, base_id).config.get("slots") or {})
    activity = EDIT if batch is None else batch_activity(batch.size)
    preflight(ws, activity, device, dtype, base_ids=bases, batch=1 if batch is None else batch.size, memory=memory)


def run_worker(ws, device: str = "auto", max_jobs: int | None = None, on_event: EventCallback | None = None,
               should_stop: StopCheck | None = None, *, watch: bool = False,
               text_metrics: bool = True, batch=None, dtype: str | None = None, memory=None) -> WorkerSummary:
    """Process the workspace's queue until it is empty (or max_jobs / should_stop), loading models in
    ``dtype`` (None: the workspace default).

    Raises LeaseHeldError when another worker runs on this workspace.
    """
    from refact_tui.services.working_model import load_history_model

    check_run_options(ws, device, batch, dtype, memory)  # refused before any job is claimed (nothing charged)
    corpus, samples = stats_settings(ws)
    stale_after, heartbeat = lease_timing()
    config = WorkerConfig(
        db_path=db_path(ws), root=Path(ws.root), deltas_dir=Path(ws.deltas_dir), stats_dir=Path(ws.stats_dir),
        device=device, max_jobs=max_jobs, watch=watch, stats_corpus=corpus, stats_samples=samples,
        lease_stale_after=stale_after, heartbeat_interval=heartbeat,
    )
    worker = Worker(
        config,
        lambda history_id: load_history_model(ws, history_id, device, dtype=dtype),
        on_event=on_event,
        should_stop=should_stop,
        after_edit=_text_metrics_hook(ws) if text_metrics else None,
        batch=batch,  # `--batch N`: services.batch_worker.BatchSettings
    )
    return worker.run()


@contextmanager
def stop_on_signals() -> Iterator[StopCheck]:
    """While active, the first SIGINT/SIGTERM asks the worker to stop between steps (the running job
    is requeued); a second SIGINT interrupts at once. Yields the should_stop callable."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def on_signal(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag.is_set
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
