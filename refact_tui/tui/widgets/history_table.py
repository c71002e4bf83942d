"""The ordered edit log of a history with status and key figures per edit."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from refact_tui.services.dashboard import HistoryView
from refact_tui.tui.widgets import fmt

STATUS_STYLE = {"applied": "green", "rolled_back": "dim strike", "failed": "bold red"}


class HistoryTable(DataTable):
    """One row per edit (seq order); the row key is the edit id."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("seq", "status", "prompt", "source → target", "steps", "P(tgt)", "||δ||", "time", "eff")

    def show(self, view: HistoryView) -> None:
        keep = self.selected_edit_id
        self.clear()
        head = view.history.head_seq if view.history else 0
        for e in view.edits:
            status = Text(e.status.replace("_", " "), style=STATUS_STYLE.get(e.status, ""))
            if e.status == "applied" and e.seq == head:
                status.append(" ◀ head", style="bold")
            steps = f"{e.steps_run}{'*' if e.early_stopped else ''}"
            self.add_row(
                str(e.seq), status, fmt.short(e.request.prompt, 26), fmt.short(fmt.change(e.request), 28),
                steps, fmt.num(e.p_target, 3), fmt.num(e.delta_norm, 3),
                fmt.duration(e.timings.get("total_s")), fmt.pct(view.efficacy.get(e.id)), key=str(e.id),
            )
        if keep is not None and str(keep) in self.rows:
            self.move_cursor(row=self.get_row_index(str(keep)))

    @property
    def selected_edit_id(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # cursor outside the table after a clear
            return None
        return int(key.value) if key.value is not None else None
