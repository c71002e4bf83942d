"""Live screen: the edit being optimized now, followed through SQLite (works with any worker)."""

from __future__ import annotations

import sqlite_utils
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Footer, Header

from refact_tui.services.batch_view import BatchLiveView, batch_live_view
from refact_tui.services.dashboard import LiveView, live_view
from refact_tui.tui.keys import SCREEN_KEYS, bindings
from refact_tui.tui.screens.base import DashboardScreen, titled
from refact_tui.tui.widgets.batch_table import BatchTable
from refact_tui.tui.widgets.event_log import EventLog
from refact_tui.tui.widgets.hparams_view import HParamsView
from refact_tui.tui.widgets.loss_plot import LossPlot, PTargetPlot
from refact_tui.tui.widgets.step_stats import StepStats


class LiveScreen(DashboardScreen):
    """Loss and P(target) curves, step counter, ||delta||, elapsed / ETA, hparams and events."""

    TITLE = "refact-tui · Live"
    MIN_REDRAW_S = 0.0  # follows every step
    BINDINGS = bindings(SCREEN_KEYS["live"])

    def __init__(self) -> None:
        super().__init__(id="live-screen")
        self.job_id: int | None = None
        self.attempt: int | None = None
        self.slot: str | None = None  # the encoder slot whose steps the plots hold
        self.last_step = -1
        self.view: LiveView | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="live-top"):
            yield titled(StepStats(id="step-stats", classes="panel"), "Edit in progress")
            yield titled(HParamsView(id="live-hparams", classes="panel"), "Hyperparameters")
        with Horizontal(id="live-plots"):
            yield LossPlot(id="loss-plot")
            yield PTargetPlot(id="p-plot")
        yield BatchTable(id="live-batch", classes="panel")
        yield titled(EventLog(id="event-log", classes="panel"), "Events")
        yield Footer(show_command_palette=False, compact=True)

    @property
    def ticking(self) -> bool:
        return bool(self.view and self.view.running)

    def read(self, db: sqlite_utils.Database, now: float) -> tuple[LiveView, BatchLiveView | None]:
        view = live_view(db, now=now, since_step=self.last_step, known_job=self.job_id,
                         known_attempt=self.attempt, known_slot=self.slot)
        return view, batch_live_view(db, view.job)

    def draw(self, data: tuple[LiveView, BatchLiveView | None]) -> None:
        view, batch = data
        self.view = view
        loss, ptgt = self.query_one(LossPlot), self.query_one(PTargetPlot)
        xs = [s.step for s in view.steps]
        if view.reset:
            loss.set_points(xs, [s.loss for s in view.steps])
            ptgt.set_points(xs, [s.p_target for s in view.steps])
        elif view.steps:
            loss.extend(xs, [s.loss for s in view.steps])
            ptgt.extend(xs, [s.p_target for s in view.steps])
        ptgt.set_threshold(view.threshold)
        self.job_id = view.job.id if view.job else None
        self.attempt = view.attempt if view.job else None
        self.slot = view.slot if view.job and view.slot else None
        if view.last is not None:
            self.last_step = view.last.step
        elif view.reset:
            self.last_step = -1
        self.query_one(StepStats).show(view)
        self.query_one(HParamsView).show(view.job.hparams if view.job else None)
        self.query_one(EventLog).add_events(view.events)
        self.show_filter_count()
        self._show_batch(batch, loss)

    def _show_batch(self, batch: BatchLiveView | None, loss: LossPlot) -> None:
        """A running batch: its requests' table, and the loss plot shows the mean over its requests."""
        self.query_one(BatchTable).show_live(batch)
        if batch is not None and batch.curve:
            loss.set_points([s for s, _ in batch.curve], [v for _, v in batch.curve])

    def filter_target(self) -> EventLog:
        return self.query_one(EventLog)

    def action_cancel_running(self) -> None:
        view = self.view
        if view is None or view.job is None or not view.running:
            self.notify("No edit is running.", severity="warning")
            return
        job = view.job
        self.refact.confirm(
            f"Cancel the running edit (job #{job.id})?",
            f"The worker stops '{job.request.prompt}' between optimization steps; the model is left "
            "untouched and the job is marked cancelled (r on the Queue screen retries it).",
            lambda: self.refact.run_service("Cancel job", "queue", "cancel", job.id),
            yes="Cancel the edit",
        )
