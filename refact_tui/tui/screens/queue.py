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
from refact_tui.tui.keys import SCREEN_KEYS, bindings
from refact_tui.tui.screens.add_edit import AddEditModal, NewEdit
from refact_tui.tui.screens.base import DashboardScreen, titled
from refact_tui.tui.screens.import_file import ImportChoice, ImportFileModal
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.queue_table import QueueTable
from store.records import JobRow


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
        yield Footer(show_command_palette=False, compact=True)

    def read(self, db: sqlite_utils.Database, now: float) -> QueueView:
        return queue_view(db, now=now)

    def draw(self, view: QueueView) -> None:
        self.view = view
        self.query_one("#queue-status", Static).update(_status_line(self.view))
        self.query_one(QueueTable).show(self.view)
        self.show_filter_count()
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

    # --- the jobs an action applies to: every marked job, else the selected one ----------------------

    def filter_target(self) -> QueueTable:
        return self.query_one(QueueTable)

    def action_toggle_mark(self) -> None:
        self.query_one(QueueTable).action_toggle_mark()

    def action_mark_range(self) -> None:
        self.query_one(QueueTable).action_mark_range()

    def _targets(self, states: tuple[str, ...], verb: str) -> list[JobRow] | None:
        """The marked jobs (or the selected one) in one of ``states``; None (and a warning) when none is."""
        table = self.query_one(QueueTable)
        ids = table.marked_ids or ([table.selected_job_id] if table.selected_job_id is not None else [])
        jobs = [j for j in (self.view.job(i) for i in ids) if j is not None] if self.view else []
        fit = [j for j in jobs if j.state in states]
        if not fit:
            what = "marked" if table.marked_ids else "selected"
            self.notify(f"No {what} job can be {verb}: only {' or '.join(states)} jobs can.", severity="warning")
            return None
        return fit

    def _bulk(self, jobs: list[JobRow], label: str, func: str, title: str, body: str, yes: str) -> None:
        """One confirmation for every job; the service runs once per job in one worker."""
        ids = [j.id for j in jobs]

        def go() -> None:
            self.query_one(QueueTable).clear_marks()
            if len(ids) == 1:
                self.refact.run_service(label, "queue", func, ids[0])
            else:
                self.refact.run_many(label, "queue", func, [(i,) for i in ids])

        self.refact.confirm(title, body, go, yes=yes, no="Keep")

    def action_move(self, delta: int) -> None:
        table = self.query_one(QueueTable)
        if self.view is None:
            return
        queued = [j.id for j in self.view.jobs if j.state == "queued"]
        ids = [i for i in (table.marked_ids or [table.selected_job_id]) if i in queued]
        if not ids:
            self.notify("Only queued jobs can be moved.", severity="warning")
            return
        # Marked jobs move together, one place each, keeping their order (the first to move goes first).
        order = list(queued)
        moves = []
        for job_id in (ids if delta < 0 else reversed(ids)):
            i = order.index(job_id)
            j = i + delta
            if not 0 <= j < len(order) or order[j] in ids:
                continue
            order[i], order[j] = order[j], order[i]
            moves.append((job_id, j))
        if not moves:
            return
        if len(moves) == 1:
            self.refact.run_service("Move job", "queue", "move", *moves[0])
        else:  # in order, in one worker: each move sees the order the previous one left
            self.refact.run_many("Move jobs", "queue", "move", moves)

    def action_cancel_job(self) -> None:
        jobs = self._targets(("queued", "running"), "cancelled")
        if jobs is None:
            return
        if len(jobs) == 1:
            job = jobs[0]
            what = ("The worker stops it between optimization steps; the model is left untouched."
                    if job.state == "running" else "It stays in the list as cancelled; r puts it back in the queue.")
            body = f"Cancel '{job.request.prompt}': {fmt.change(job.request)}.\n{what}"
            title = f"Cancel job #{job.id}?"
        else:
            running = sum(1 for j in jobs if j.state == "running")
            title = f"Cancel {len(jobs)} jobs?"
            body = (f"{_listing(jobs)}\nThey stay in the list as cancelled; r puts them back in the queue."
                    + (" The running one stops between optimization steps." if running else ""))
        self._bulk(jobs, "Cancel job", "cancel", title, body, "Cancel job" if len(jobs) == 1 else "Cancel jobs")

    def action_retry_job(self) -> None:
        jobs = self._targets(("failed", "cancelled"), "retried")
        if jobs is None:
            return
        if len(jobs) == 1:
            job = jobs[0]
            reason = f"It failed with: {job.error}\n" if job.error else ""
            title = f"Retry job #{job.id}?"
            body = (f"{reason}Put '{job.request.prompt}' ({fmt.change(job.request)}) back at the end of the queue "
                    "with the same request and hyperparameters.")
        else:
            title = f"Retry {len(jobs)} jobs?"
            body = f"{_listing(jobs)}\nEach goes back to the end of the queue with its request and hyperparameters."
        self._bulk(jobs, "Retry job", "retry", title, body, "Retry job" if len(jobs) == 1 else "Retry jobs")

    def action_remove_job(self) -> None:
        jobs = self._targets(("queued", "failed", "cancelled"), "removed")
        if jobs is None:
            return
        n = len(jobs)
        title = f"Remove job #{jobs[0].id}?" if n == 1 else f"Remove {n} jobs?"
        body = f"{_listing(jobs)}\nDeleted from the workspace for good (edits already applied are not touched)."
        self._bulk(jobs, "Remove job", "remove", title, body, "Remove job" if n == 1 else "Remove jobs")

    def action_clear_queue(self) -> None:
        if self.view is None or self.view.history is None:
            return
        queued = [j for j in self.view.jobs if j.state == "queued"]
        if not queued:
            self.notify("No queued job to clear.", severity="warning")
            return
        name = self.view.history.name
        self.refact.confirm(
            f"Clear the queue of '{name}'?",
            f"Delete all {len(queued)} queued job(s) of '{name}' for good:\n{_listing(queued)}\n"
            "Running, failed and cancelled jobs stay; other histories' queues are not touched.",
            lambda: self.refact.run_service("Clear queue", "queue", "clear"),
            yes=f"Delete {len(queued)} job(s)", no="Keep",
        )


def _listing(jobs: list[JobRow], most: int = 5) -> str:
    """'#7 The Pope: John Paul II → Benedict XVI (queued)' per job, the first ``most`` of them."""
    lines = [f"#{j.id} {fmt.short(j.request.prompt, 40)}: {fmt.short(fmt.change(j.request), 40)} ({j.state})"
             for j in jobs[:most]]
    if len(jobs) > most:
        lines.append(f"… and {len(jobs) - most} more")
    return "\n".join(lines)
