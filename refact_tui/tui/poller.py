"""A read-only view on the workspace database for the UI thread: cheap change detection."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from store.db import data_version, open_db


class StorePoller:
    """Own connection to the workspace DB; ``changed()`` is True after another connection commits.

    ``PRAGMA data_version`` costs microseconds, so the UI can ask at every timer tick and only
    re-query (in short read transactions, see services.dashboard) when something was written.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db: sqlite_utils.Database = open_db(self.db_path, read_only=True)
        self._seen: int | None = None
        self._forced = True

    def force(self) -> None:
        """Make the next ``changed()`` return True (after an action from this process)."""
        self._forced = True

    @property
    def forced(self) -> bool:
        """True when this process asked for the next read (an action, a screen switch)."""
        return self._forced

    def changed(self) -> bool:
        version = data_version(self.db)
        changed = self._forced or version != self._seen
        self._seen = version
        self._forced = False
        return changed

    def close(self) -> None:
        self.db.conn.close()
