"""The job queue as a table that keeps its cursor on the same job across refreshes."""

from __future__ import annotations

from rich.text import Text

from refact_tui.services.dashboard import QueueView
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.keyed_table import KeyedTable

STATE_STYLE = {"running": "bold green", "queued": "", "failed": "bold red", "cancelled": "dim"}


class QueueTable(KeyedTable):
    """Running, queued, failed and cancelled jobs of the current history."""

    COLUMNS = ("#", "job", "state", "prompt", "source → target", "tries", "error")
    MARKABLE = True

    def show(self, view: QueueView) -> None:
        def cells(i: int, job) -> tuple:
            return (str(i), str(job.id), Text(job.state, style=STATE_STYLE.get(job.state, "")),
                    fmt.short(job.request.prompt, 34), fmt.short(fmt.change(job.request), 36),
                    str(job.attempts), fmt.short(job.error, 30) if job.error else "")

        self.replace_rows((job.id, self.cells_for(job.id, (i, job), lambda i=i, job=job: cells(i, job)))
                          for i, job in enumerate(view.jobs, start=1))

    @property
    def selected_job_id(self) -> int | None:
        return self.selected_id
