"""A row-cursor DataTable keyed by integer ids: incremental updates, a text filter and marked rows."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from refact_tui.services.display import plain

MARK = "●"

# Every table moves the same way: vi keys and Home/End go to rows, not columns.
NAV_BINDINGS = [
    Binding("j", "cursor_down", "Down", show=False),
    Binding("k", "cursor_up", "Up", show=False),
    Binding("home,g", "scroll_top", "First row", show=False),
    Binding("end,G", "scroll_bottom", "Last row", show=False),
]


def matches(cells: tuple[Text, ...], query: str) -> bool:
    """Every whitespace-separated word of ``query`` occurs in some cell (case-insensitive)."""
    hay = " ".join(c.plain for c in cells).casefold()
    return all(word in hay for word in query.casefold().split())


def _same(a: Text, b: Text) -> bool:
    return a.plain == b.plain and a.style == b.style and a.spans == b.spans


class KeyedTable(DataTable):
    """Subclasses set COLUMNS and fill the table with ``replace_rows``.

    A refresh with the same visible rows in the same order only rewrites the cells that changed, so
    a poll during a running edit costs almost nothing and the cursor never jumps. ``filter_text`` hides
    rows that do not match; with MARKABLE, space marks a row and ``v`` marks the range from the last
    mark to the cursor (``marked_ids``).
    """

    COLUMNS: tuple[str, ...] = ()
    MARKABLE = False
    BINDINGS = NAV_BINDINGS

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._all: dict[int, tuple[Text, ...]] = {}  # every row, in order
        self._shown: dict[int, tuple[Text, ...]] = {}  # the rows on screen (marks included)
        self.filter_text = ""
        self.marked: set[int] = set()
        self._anchor: int | None = None
        self._cells: dict[int, tuple[Any, tuple[Text, ...]]] = {}  # row id -> (what it showed, its cells)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for i, label in enumerate(self.COLUMNS):
            self.add_column(label, key=str(i))

    def replace_rows(self, rows: Iterable[tuple[int, tuple[Any, ...]]]) -> None:
        """Show ``(id, cells)`` pairs; the cursor stays on the selected id if it is still there.

        Text cells are shown as plain text (DataTable would parse a str as markup), controls escaped."""
        self._all = {row_id: tuple(c if isinstance(c, Text) else plain(c) for c in cells) for row_id, cells in rows}
        self.marked &= self._all.keys()
        for gone in self._cells.keys() - self._all.keys():
            del self._cells[gone]
        self._sync()

    def cells_for(self, row_id: int, source: Any, build: Callable[[], tuple[Any, ...]]) -> tuple[Text, ...]:
        """``build()``'s cells for a row, rebuilt only when ``source`` (what the row shows) changed:
        a refresh of 500 unchanged jobs formats nothing."""
        hit = self._cells.get(row_id)
        if hit is not None and hit[0] == source:
            return hit[1]
        cells = tuple(c if isinstance(c, Text) else plain(c) for c in build())
        self._cells[row_id] = (source, cells)
        return cells

    def set_filter(self, text: str) -> None:
        if text != self.filter_text:
            self.filter_text = text
            self._sync()

    @property
    def visible_count(self) -> int:
        return len(self._shown)

    @property
    def total_count(self) -> int:
        return len(self._all)

    def _row(self, row_id: int, cells: tuple[Text, ...]) -> tuple[Text, ...]:
        """A markable table shows the mark in front of the first cell (the columns stay as they are)."""
        if not self.MARKABLE or not cells:
            return cells
        first = Text(MARK if row_id in self.marked else " ", style="bold yellow")
        first.append(" ").append_text(cells[0])
        return (first, *cells[1:])

    def _sync(self) -> None:
        want = {i: self._row(i, c) for i, c in self._all.items()
                if not self.filter_text or matches(c, self.filter_text)}
        if list(want) == list(self._shown):
            for row_id, cells in want.items():
                old = self._shown[row_id]
                for col, (a, b) in enumerate(zip(old, cells)):
                    if not _same(a, b):
                        self.update_cell(str(row_id), str(col), b)
            self._shown = want
            return
        keep = self.selected_id
        self.clear()
        for row_id, cells in want.items():
            self.add_row(*cells, key=str(row_id))
        self._shown = want
        if keep is not None and keep in want:
            self.move_cursor(row=self.get_row_index(str(keep)))

    # --- marks -----------------------------------------------------------------------------------

    def action_toggle_mark(self) -> None:
        row_id = self.selected_id
        if row_id is None:
            return
        self.marked ^= {row_id}
        self._anchor = row_id
        self._sync()
        self.action_cursor_down()

    def action_mark_range(self) -> None:
        """Mark every visible row from the last toggled one (or the first row) to the cursor."""
        row_id = self.selected_id
        if row_id is None:
            return
        order = list(self._shown)
        start = order.index(self._anchor) if self._anchor in self._shown else 0
        end = order.index(row_id)
        lo, hi = sorted((start, end))
        self.marked |= set(order[lo:hi + 1])
        self._anchor = row_id
        self._sync()

    def set_marks(self, ids: list[int]) -> None:
        self.marked = set(ids) & self._all.keys()
        self._sync()

    @property
    def row_ids(self) -> list[int]:
        """Every row id in order (hidden ones included)."""
        return list(self._all)

    def clear_marks(self) -> None:
        if self.marked:
            self.marked.clear()
            self._sync()

    @property
    def marked_ids(self) -> list[int]:
        """The marked rows that still exist, in table order."""
        return [i for i in self._all if i in self.marked]

    @property
    def selected_id(self) -> int | None:
        """The id of the row under the cursor (None for an empty table)."""
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # cursor outside the table after a clear
            return None
        return int(key.value) if key.value is not None else None
