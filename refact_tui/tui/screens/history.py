"""History screen: the ordered edit log, the selected edit's detail, and history actions."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from refact_tui.services.batch_view import batch_detail_view
from refact_tui.services.dashboard import HistoryView, edit_detail_view, history_view, queue_view
from refact_tui.services.display import display_text
from refact_tui.services.history_labels import origin_label
from refact_tui.tui.keys import SCREEN_KEYS, bindings
from refact_tui.tui.screens.base import DashboardScreen, titled
from refact_tui.tui.screens.histories import HistoriesModal
from refact_tui.tui.viewer import open_in_viewer
from refact_tui.tui.widgets.edit_detail import EditDetail
from refact_tui.tui.widgets.history_table import HistoryTable


def unique_name(existing: set[str], stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3`` ... whichever is free."""
    if stem not in existing:
        return stem
    i = 2
    while f"{stem}-{i}" in existing:
        i += 1
    return f"{stem}-{i}"


class HistoryScreen(DashboardScreen):
    """Edit log of the current history with rollback, replay, re-optimize, fork and export."""

    TITLE = "refact-tui · History"
    BINDINGS = bindings(SCREEN_KEYS["history"])

    def __init__(self) -> None:
        super().__init__(id="history-screen")
        self.view: HistoryView | None = None
        self.shown_edit: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="history-status", classes="status-line")
        yield titled(HistoryTable(id="history-table"), "Edits")
        yield titled(EditDetail(id="edit-detail", classes="panel"), "Selected edit")
        yield Footer(show_command_palette=False, compact=True)

    def read(self, db: sqlite_utils.Database, now: float) -> HistoryView:
        return history_view(db)

    def draw(self, view: HistoryView) -> None:
        self.view = view
        hist = self.view.history
        status = Text()  # the history's name is in the header
        if hist is not None:
            applied = sum(1 for e in self.view.edits if e.status == "applied")
            status.append(f"head at edit {hist.head_seq}", style="bold")
            status.append(f" · {applied} applied of {len(self.view.edits)} recorded")
            later = sum(1 for e in self.view.edits if e.status == "rolled_back" and e.seq > hist.head_seq)
            if later:
                status.append(f" · {later} rolled back after the head (r rolls forward)")
            if hist.parent_id is not None:
                parent = next((h.name for h in self.view.histories if h.id == hist.parent_id), None)
                status.append(f" · {display_text(origin_label(hist, parent))}", style="dim")
            if len(self.view.histories) > 1:
                status.append(f" · {len(self.view.histories)} histories (h)", style="dim")
        self.query_one("#history-status", Static).update(status)
        self.query_one(HistoryTable).show(self.view)
        self.show_filter_count()
        self._show_detail(self.refact.read_db, force=True)  # one edit: a short read

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(self.refact.read_db, force=False)

    def _show_detail(self, db: sqlite_utils.Database | None, force: bool) -> None:
        edit_id = self.query_one(HistoryTable).selected_edit_id
        if db is None or (edit_id == self.shown_edit and not force):
            return
        self.shown_edit = edit_id
        detail = edit_detail_view(db, edit_id, root=self.refact.workspace_root) if edit_id is not None else None
        self.query_one(EditDetail).show(detail)
        self.query_one(EditDetail).show_batch(batch_detail_view(db, edit_id) if edit_id is not None else None)

    def _selected(self):
        edit_id = self.query_one(HistoryTable).selected_edit_id
        return self.view.edit(edit_id) if (self.view and edit_id is not None) else None

    # --- actions ---------------------------------------------------------------------------------

    def action_rollback(self) -> None:
        e, hist = self._selected(), self.view.history if self.view else None
        if e is None or hist is None or e.status != "applied":
            self.notify("Select an applied edit to roll back to.", severity="warning")
            return
        if e.seq == hist.head_seq:
            self.notify(f"Edit {e.seq} is already the head.", severity="information")
            return
        later = [x.seq for x in self.view.edits if x.status == "applied" and x.seq > e.seq]
        self.refact.confirm(
            f"Roll back '{hist.name}' to edit {e.seq}?",
            f"Edits {', '.join(map(str, later))} ({len(later)}) are marked rolled back; they stay in the log "
            f"and their deltas stay on disk. The model becomes the base + edits 1..{e.seq}, rebuilt and "
            "checked against the hash recorded when edit "
            f"{e.seq} was applied. Queued jobs are not touched. r (roll forward) undoes it.",
            lambda: self.refact.run_service("Rollback", "history", "rollback", e.seq),
            yes=f"Roll back to edit {e.seq}",
        )

    def action_rollforward(self) -> None:
        hist = self.view.history if self.view else None
        if hist is None:
            return
        kept = [x.seq for x in self.view.edits if x.status == "rolled_back" and x.seq > hist.head_seq]
        if not kept:
            self.notify(f"Nothing to roll forward: no edit after the head ({hist.head_seq}) was rolled back.",
                        severity="warning")
            return
        e = self._selected()
        target = e.seq if e is not None and e.seq in kept else kept[-1]
        back = [s for s in kept if s <= target]
        self.refact.confirm(
            f"Roll '{hist.name}' forward to edit {target}?",
            f"Edits {', '.join(map(str, back))} ({len(back)}) are applied again from their stored deltas, in "
            f"order. The model becomes the base + edits 1..{target}, rebuilt and checked bit for bit against "
            f"the hash recorded when edit {target} was applied (nothing changes if it differs). "
            "Queued jobs are not touched.",
            lambda: self.refact.run_service("Roll forward", "history", "rollforward", target),
            yes=f"Roll forward to edit {target}",
        )

    def action_histories(self) -> None:
        """The histories tree; choosing one checks it out."""
        modal = HistoriesModal()

        def chosen(name: str | None) -> None:
            if name is not None and (self.view is None or self.view.history is None
                                     or name != self.view.history.name):
                self.refact.run_service("Checkout", "history", "checkout", name)

        self.app.push_screen(modal, chosen)
        self.refact.run_service("Histories", "history", "list_all_histories",
                                on_result=lambda infos: modal.show(infos) if modal.is_attached else None)

    def _left_behind(self, hist) -> str:
        """What stays with ``hist`` when another history becomes current: its queued jobs."""
        db = self.refact.read_db
        n = queue_view(db, now=self.refact.clock()).counts.get("queued", 0) if db is not None else 0
        if not n:
            return ""
        return (f" The {n} queued job(s) of '{hist.name}' stay with '{hist.name}': the Queue screen shows the new "
                "history's queue (h lists histories and checks one out).")

    def _applied(self) -> list[int]:
        return [x.seq for x in self.view.edits if x.status == "applied"] if self.view else []

    def action_replay(self) -> None:
        self._confirm_replay(False)

    def action_reoptimize(self) -> None:
        self._confirm_replay(True)

    def _confirm_replay(self, reoptimize: bool) -> None:
        hist = self.view.history if self.view else None
        if hist is None:
            return
        n = len(self._applied())
        if reoptimize:
            title, label = f"Re-optimize '{hist.name}'?", "Re-optimize"
            body = (f"A new history (named '{hist.name}-reopt-N') starts from the base model and queues the {n} "
                    "applied request(s) as new jobs with their stored hyperparameters; it becomes the current "
                    "history. Start the worker (w) to run them. The old history is unchanged.")
            label_yes = "Re-optimize"
        else:
            title, label = f"Replay '{hist.name}'?", "Replay"
            body = (f"A new history (named '{hist.name}-replay-N') re-applies the {n} stored delta(s) of "
                    f"'{hist.name}' in order onto its base model, records the weight hash after each, and "
                    "becomes the current history. Nothing is re-optimized; the old history is unchanged.")
            label_yes = "Replay"
        extra = {"reoptimize": True} if reoptimize else {}
        self.refact.confirm(title, body + self._left_behind(hist),
                            lambda: self.refact.run_service(label, "history", "replay", **extra), yes=label_yes)

    def action_fork(self) -> None:
        e, hist = self._selected(), self.view.history if self.view else None
        if e is None or hist is None or e.status != "applied":
            self.notify("Select an applied edit to fork at.", severity="warning")
            return
        name = unique_name({h.name for h in self.view.histories}, f"{hist.name}-fork{e.seq}")
        self.refact.confirm(
            f"Fork '{hist.name}' at edit {e.seq}?",
            f"Create history '{name}' holding edits 1..{e.seq} of '{hist.name}' (delta files are shared) "
            "and make it the current history. New edits go to the fork; the original is unchanged."
            + self._left_behind(hist),
            lambda: self.refact.run_service("Fork", "history", "fork", e.seq, name),
            yes=f"Fork at edit {e.seq}",
        )

    def action_export(self) -> None:
        hist = self.view.history if self.view else None
        if hist is None:
            return
        out = self.refact.workspace_root / "exports" / f"{hist.name}-edit{hist.head_seq}"
        n = len(self._applied())
        self.refact.confirm(
            f"Export '{hist.name}'?",
            f"Write the base pipeline with the {n} applied edit(s) of '{hist.name}' (head {hist.head_seq}) "
            f"to {_rel(out, self.refact.workspace_root)} (save_pretrained, safetensors) plus a manifest of "
            "the deltas. An existing folder of that name is an error.",
            lambda: self.refact.run_service("Export", "export", "export_pipeline", out),
            yes="Export",
        )

    def filter_target(self) -> HistoryTable:
        return self.query_one(HistoryTable)

    def action_open_grid(self) -> None:
        """The selected edit's before/after grid in the system image viewer."""
        detail = self.query_one(EditDetail).detail
        path = detail.grid_path if detail is not None else None
        if path is None or not path.is_file():
            self.notify("No before/after grid for this edit: run an image evaluation (i on the Metrics screen).",
                        severity="warning")
            return
        problem = open_in_viewer(path)
        if problem:
            self.notify(problem, severity="warning", timeout=8)
        else:
            self.notify(f"Opening {path.name} in the system viewer.")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
