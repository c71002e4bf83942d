"""The ordered edit log of a history with status and key figures per edit."""

from __future__ import annotations

from rich.text import Text

from refact_tui.services.dashboard import HistoryView
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.keyed_table import KeyedTable

STATUS_STYLE = {"applied": "green", "rolled_back": "dim strike", "failed": "bold red"}


class HistoryTable(KeyedTable):
    """One row per edit (seq order); the row key is the edit id."""

    COLUMNS = ("seq", "status", "prompt", "source → target", "steps", "P(tgt)", "||δ||", "time", "eff")

    def show(self, view: HistoryView) -> None:
        head = view.history.head_seq if view.history else 0

        def cells(e):
            status = Text(e.status.replace("_", " "), style=STATUS_STYLE.get(e.status, ""))
            if e.status == "applied" and e.seq == head:
                status.append(" ◀ head", style="bold")
            return (str(e.seq), status, fmt.short(e.request.prompt, 26), fmt.short(fmt.change(e.request), 28),
                    f"{e.steps_run}{'*' if e.early_stopped else ''}", fmt.num(e.p_target, 3),
                    fmt.num(e.delta_norm, 3), fmt.duration(e.timings.get("total_s")),
                    fmt.pct(view.efficacy.get(e.id)))

        self.replace_rows((e.id, cells(e)) for e in view.edits)

    @property
    def selected_edit_id(self) -> int | None:
        return self.selected_id
