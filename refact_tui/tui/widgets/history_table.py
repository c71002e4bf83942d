"""The ordered edit log of a history with status and key figures per edit."""

from __future__ import annotations

from rich.text import Text

from refact_tui.services.convergence import edit_budget_used
from refact_tui.services.dashboard import HistoryView
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.keyed_table import KeyedTable

STATUS_STYLE = {"applied": "green", "rolled_back": "dim strike", "failed": "bold red"}


class HistoryTable(KeyedTable):
    """One row per edit (seq order); the row key is the edit id."""

    # eff: the latest text-space efficacy (apply-time or a later text evaluation); image scores are on Metrics
    COLUMNS = ("seq", "status", "prompt", "source → target", "steps", "P(target)", "||δ||", "time", "E text")

    def show(self, view: HistoryView) -> None:
        head = view.history.head_seq if view.history else 0

        def cells(e):
            status = Text(e.status.replace("_", " "), style=STATUS_STYLE.get(e.status, ""))
            if edit_budget_used(e):
                status.append(", budget used", style="yellow")
            if e.status == "applied" and e.seq == head:
                status.append(" ◀ head", style="bold")
            return (str(e.seq), status, fmt.short(e.request.prompt, 24), fmt.short(fmt.change(e.request), 28),
                    f"{e.steps_run}{'*' if e.early_stopped else ''}", fmt.num(e.p_target, 3),
                    fmt.num(e.delta_norm, 3), fmt.duration(e.timings.get("total_s")),
                    fmt.pct(view.efficacy.get(e.id)))

        self.replace_rows((e.id, self.cells_for(e.id, (e, head, view.efficacy.get(e.id)), lambda e=e: cells(e)))
                          for e in view.edits)

    @property
    def selected_edit_id(self) -> int | None:
        return self.selected_id
