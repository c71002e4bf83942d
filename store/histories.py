"""Histories: named, ordered lines of edits on a base model (they can fork from one another)."""

from __future__ import annotations

import sqlite3

import sqlite_utils

from store.db import StoreError, fetch_all, fetch_one, fetch_required, get_meta, now, set_meta, transaction
from store.records import HistoryRow

CURRENT_KEY = "current_history_id"


def create_history(
    db: sqlite_utils.Database,
    base_model_id: int,
    name: str,
    parent_id: int | None = None,
    forked_at_seq: int | None = None,
) -> HistoryRow:
    """Create a history (head 0 = the base model). Names are unique."""
    name = name.strip()
    if not name:
        raise StoreError("a history needs a non-empty name")
    if name.isdigit():
        raise StoreError(f"history name {name!r} is all digits (it would read as an id); add a letter")
    with transaction(db):
        if fetch_one(db, "SELECT 1 FROM histories WHERE name = ?", [name]):
            raise StoreError(f"a history named {name!r} already exists; pick another name")
        try:
            cur = db.execute(
                "INSERT INTO histories (base_model_id, name, parent_id, forked_at_seq, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [base_model_id, name, parent_id, forked_at_seq, now()],
            )
        except sqlite3.IntegrityError:
            raise StoreError(
                f"cannot create history {name!r}: base model {base_model_id} or parent {parent_id} "
                "does not exist"
            ) from None
        return get_history(db, cur.lastrowid)


def get_history(db: sqlite_utils.Database, id_or_name: int | str) -> HistoryRow:
    """A history by id (int or digit string) or by name; NotFoundError if none."""
    if isinstance(id_or_name, int) or (isinstance(id_or_name, str) and id_or_name.isdigit()):
        sql, key = "SELECT * FROM histories WHERE id = ?", int(id_or_name)
    else:
        sql, key = "SELECT * FROM histories WHERE name = ?", str(id_or_name).strip()
    missing = f"no history {id_or_name!r}; `refact histories` lists them"
    return HistoryRow.from_row(fetch_required(db, sql, [key], missing))


def current_history(db: sqlite_utils.Database) -> HistoryRow:
    """The workspace's current history (meta 'current_history_id')."""
    value = get_meta(db, CURRENT_KEY)
    if value is None:
        raise StoreError("this workspace has no current history; run `refact init --model PATH` first")
    return get_history(db, int(value))


def set_current_history(db: sqlite_utils.Database, id: int) -> HistoryRow:
    """Make a history current; returns it."""
    with transaction(db):
        history = get_history(db, id)
        set_meta(db, CURRENT_KEY, str(history.id))
    return history


def list_histories(db: sqlite_utils.Database) -> list[HistoryRow]:
    """All histories, oldest first."""
    return [HistoryRow.from_row(r) for r in fetch_all(db, "SELECT * FROM histories ORDER BY id")]


def set_head(db: sqlite_utils.Database, history_id: int, seq: int) -> HistoryRow:
    """Move a history's head (0 = base model). The seq must be 0 or an existing edit's seq."""
    if seq < 0:
        raise StoreError(f"head must be >= 0, got {seq}")
    with transaction(db):
        history = get_history(db, history_id)
        if seq > 0 and not fetch_one(
            db, "SELECT 1 FROM edits WHERE history_id = ? AND seq = ?", [history.id, seq]
        ):
            raise StoreError(f"history {history.name!r} has no edit with seq {seq}")
        db.execute("UPDATE histories SET head_seq = ? WHERE id = ?", [seq, history.id])
        return get_history(db, history.id)
