"""Queue screen: jobs waiting, running or failed; add, import, reorder, cancel, retry."""

from __future__ import annotations

import sqlite_utils
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Static

from refact_tui.services.dashboard import QueueView, queue_view
from refact_tui.services.display import plain
from refact_tui.tui.screens.add_edit import AddEditModal, NewEdit
from refact_tui.tui.keys import SCREEN_KEYS, bindings
from refact_tui.tui.screens.base import DashboardScreen, titled
from refact_tui.tui.screens.import_file import ImportChoice, ImportFileModal
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.queue_table import QueueTable


def _status_line(view: QueueView) -> Text:
    # The history's name is in the header; zero counts other than 'queued' are left out.
    c = view.counts
    counts = [f"{c.get('queued', 0)} queued"] + [f"{c[s]} {s}" for s in ("running", "done", "failed", "cancelled")
                                                 if c.get(s)]
    text = Text(" · ".join(counts) + "   ", style="bold")
    w = view.worker
    if w is None:
        text.append("worker: not running (w starts one, or `refact run`)", style="dim")
    elif w.alive:
        text.append(f"worker: pid {w.pid} on {w.host}", style="green")
    else:
        text.append(f"worker: pid {w.pid} silent for {fmt.duration(w.heartbeat_age)}", style="yellow")
    return text


class QueueScreen(DashboardScreen):
    """The current history's job queue."""

    TITLE = "refact-tui · Queue"
    BINDINGS = bindings(SCREEN_KEYS["queue"])

    def __init__(self) -> None:
        super().__init__(id="queue-screen")
        self.view: QueueView | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="queue-status", classes="status-line")
        yield titled(QueueTable(id="queue-table"), "Queue")
        with titled(Vertical(id="job-detail", classes="panel"), "Selected job"):
            yield Static(id="job-detail-body")
        yield Footer()

    def refresh_from(self, db: sqlite_utils.Database, now: float) -> None:
        self.view = queue_view(db, now=now)
        self.query_one("#queue-status", Static).update(_status_line(self.view))
        self.query_one(QueueTable).show(self.view)
        self._show_selected()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def _selected(self):
        job_id = self.query_one(QueueTable).selected_job_id
        return self.view.job(job_id) if (self.view and job_id is not None) else None

    def _show_selected(self) -> None:
        body = self.query_one("#job-detail-body", Static)
        job = self._selected()
        if job is None:
            body.update(Text("The queue is empty: a adds an edit, i imports a file.", style="dim"))
            return
        t = Table.grid(padding=(0, 1))
        t.add_column(style="bold")
        t.add_column()
        t.add_row("job", f"#{job.id}  {job.state}  attempts {job.attempts}  layer {job.hparams.layer}, "
                         f"at most {job.hparams.max_steps} steps, stop at P ≥ {job.hparams.prob_threshold:g}")
        for line in fmt.request_lines(job.request):
            key, _, value = line.partition(" ")
            t.add_row(key, plain(value.strip()))
        if job.error:
            t.add_row("error", plain(job.error, style="bold red"))
        body.update(t)

    # --- actions ---------------------------------------------------------------------------------

    def action_add(self) -> None:
        def done(result: NewEdit | None) -> None:
            if result is not None:
                self.refact.run_service("Queue edit", "queue", "add_edit", result.request, result.hparams)

        self.app.push_screen(AddEditModal(), done)

    def action_import_file(self) -> None:
        def done(choice: ImportChoice | None) -> None:
            if choice is not None:
                self.refact.run_service("Import", "queue", "import_requests", choice.path,
                                        format=choice.format, skip_invalid=choice.skip_invalid)

        self.app.push_screen(ImportFileModal(), done)

    def action_move(self, delta: int) -> None:
        job = self._selected()
        if job is None or job.state != "queued" or self.view is None:
            self.notify("Only queued jobs can be moved.", severity="warning")
            return
        queued = [j.id for j in self.view.jobs if j.state == "queued"]
        index = queued.index(job.id) + delta
        if not 0 <= index < len(queued):
            return
        self.refact.run_service("Move job", "queue", "move", job.id, index)

    def action_cancel_job(self) -> None:
        job = self._selected()
        if job is None or job.state not in ("queued", "running"):
            self.notify("Select a queued or running job to cancel.", severity="warning")
            return
        what = ("The worker stops it between optimization steps; the model is left untouched."
                if job.state == "running" else "It stays in the list as cancelled; r puts it back in the queue.")
        self.refact.confirm(
            f"Cancel job #{job.id}?",
            f"Cancel '{job.request.prompt}': {fmt.change(job.request)}.\n{what}",
            lambda: self.refact.run_service("Cancel job", "queue", "cancel", job.id),
        )

    def action_retry_job(self) -> None:
        job = self._selected()
        if job is None or job.state not in ("failed", "cancelled"):
            self.notify("Select a failed or cancelled job to retry.", severity="warning")
            return
        reason = f"It failed with: {job.error}\n" if job.error else ""
        self.refact.confirm(
            f"Retry job #{job.id}?",
            f"{reason}Put '{job.request.prompt}' ({fmt.change(job.request)}) back at the end of the queue "
            "with the same request and hyperparameters.",
            lambda: self.refact.run_service("Retry job", "queue", "retry", job.id),
        )
