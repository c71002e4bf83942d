"""A row-cursor DataTable keyed by integer ids that keeps its cursor on the same id across refreshes."""

from __future__ import annotations

from typing import Any, Iterable

from rich.text import Text
from textual.widgets import DataTable

from refact_tui.services.display import plain


class KeyedTable(DataTable):
    """Subclasses set COLUMNS and fill the table with ``replace_rows``."""

    COLUMNS: tuple[str, ...] = ()

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns(*self.COLUMNS)

    def replace_rows(self, rows: Iterable[tuple[int, tuple[Any, ...]]]) -> None:
        """Replace every row by ``(id, cells)`` pairs; the cursor stays on the selected id if still there.

        Text cells are shown as plain text (DataTable would parse a str as markup), controls escaped."""
        keep = self.selected_id
        self.clear()
        for row_id, cells in rows:
            self.add_row(*(c if isinstance(c, Text) else plain(c) for c in cells), key=str(row_id))
        if keep is not None and str(keep) in self.rows:
            self.move_cursor(row=self.get_row_index(str(keep)))

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
