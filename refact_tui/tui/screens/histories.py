"""The histories of the workspace as a tree (parent, fork point, head, queued jobs), with checkout."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from refact_tui.services.history_labels import origin_label
from refact_tui.tui.widgets.keyed_table import KeyedTable


def tree_order(infos: list[Any]) -> list[tuple[Any, int]]:
    """``(HistoryInfo, depth)`` with every history right under its parent (roots and siblings by id)."""
    children: dict[int | None, list[Any]] = {}
    ids = {i.history.id for i in infos}
    for info in sorted(infos, key=lambda i: i.history.id):
        parent = info.history.parent_id if info.history.parent_id in ids else None
        children.setdefault(parent, []).append(info)
    out: list[tuple[Any, int]] = []

    def walk(parent: int | None, depth: int) -> None:
        for info in children.get(parent, []):
            out.append((info, depth))
            walk(info.history.id, depth + 1)

    walk(None, 0)
    return out


class HistoriesTable(KeyedTable):
    COLUMNS = ("", "history", "from", "head", "applied", "rolled back", "queued")

    def show(self, infos: list[Any]) -> None:
        names = {i.history.id: i.history.name for i in infos}
        rows = []
        for info, depth in tree_order(infos):
            h = info.history
            name = Text("  " * depth + ("└ " if depth else ""))
            name.append(h.name, style="bold" if info.current else "")
            rows.append((h.id, (Text("▶", style="bold green") if info.current else "", name,
                                origin_label(h, names.get(h.parent_id)), h.head_seq, info.applied,
                                info.rolled_back, info.queued)))
        self.replace_rows(rows)


class HistoriesModal(ModalScreen[str | None]):
    """Every history; enter checks the selected one out (dismisses with its name), escape closes."""

    BINDINGS = [Binding("escape,q", "close", "Close"), Binding("c", "checkout", "Check out")]

    def __init__(self) -> None:
        super().__init__(classes="modal")
        self.infos: list[Any] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="histories-body"):
            yield Static("Histories", classes="dialog-title")
            yield Static(Text("loading…", style="dim"), id="histories-note")
            yield HistoriesTable(id="histories-table")
            yield Static(Text("enter / c: check out the selected history · escape: close", style="dim"))

    def show(self, infos: list[Any]) -> None:
        self.infos = list(infos)
        table = self.query_one(HistoriesTable)
        table.show(self.infos)
        current = next((i for i in self.infos if i.current), None)
        if current is not None:
            table.move_cursor(row=table.get_row_index(str(current.history.id)))
        self.query_one("#histories-note", Static).update(Text(
            "A history is its base model plus its own applied edits; each keeps its own queue.", style="dim"))
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_checkout()

    def action_checkout(self) -> None:
        hid = self.query_one(HistoriesTable).selected_id
        info = next((i for i in self.infos if i.history.id == hid), None)
        if info is not None:
            self.dismiss(info.history.name)

    def action_close(self) -> None:
        self.dismiss(None)
