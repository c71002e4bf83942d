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
    "run_worker", "stop_on_signals", "stats_settings", "STATS_CORPUS_KEY", "STATS_SAMPLES_KEY",
]

# Workspace-wide covariance settings (written by `refact stats compute`, read by the worker).
STATS_CORPUS_KEY = "stats.corpus"
STATS_SAMPLES_KEY = "stats.samples"


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


def run_worker(ws, device: str = "auto", max_jobs: int | None = None, on_event: EventCallback | None = None,
               should_stop: StopCheck | None = None, *, watch: bool = False,
               text_metrics: bool = True) -> WorkerSummary:
    """Process the workspace's queue until it is empty (or max_jobs / should_stop).

    Raises LeaseHeldError when another worker runs on this workspace.
    """
    from refact_tui.services.state import load_history_model

    corpus, samples = stats_settings(ws)
    config = WorkerConfig(
        db_path=db_path(ws), root=Path(ws.root), deltas_dir=Path(ws.deltas_dir), stats_dir=Path(ws.stats_dir),
        device=device, max_jobs=max_jobs, watch=watch, stats_corpus=corpus, stats_samples=samples,
    )
    worker = Worker(
        config,
        lambda history_id: load_history_model(ws, history_id, device),
        on_event=on_event,
        should_stop=should_stop,
        after_edit=_text_metrics_hook(ws) if text_metrics else None,
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
