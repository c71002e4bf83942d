"""The job queue as a table that keeps its cursor on the same job across refreshes."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from refact_tui.services.dashboard import QueueView
from refact_tui.tui.widgets import fmt

STATE_STYLE = {"running": "bold green", "queued": "", "failed": "bold red", "cancelled": "dim"}


class QueueTable(DataTable):
    """Running, queued, failed and cancelled jobs of the current history."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("#", "job", "state", "prompt", "source → target", "tries", "error")

    def show(self, view: QueueView) -> None:
        keep = self.selected_job_id
        self.clear()
        for i, job in enumerate(view.jobs, start=1):
            state = Text(job.state, style=STATE_STYLE.get(job.state, ""))
            self.add_row(
                str(i), str(job.id), state, fmt.short(job.request.prompt, 34),
                fmt.short(fmt.change(job.request), 36), str(job.attempts),
                fmt.short(job.error, 30) if job.error else "", key=str(job.id),
            )
        if keep is not None and str(keep) in self.rows:
            self.move_cursor(row=self.get_row_index(str(keep)))

    @property
    def selected_job_id(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # cursor outside the table after a clear
            return None
        return int(key.value) if key.value is not None else None
