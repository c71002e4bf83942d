"""Health checks of a workspace database: SQLite's own checks plus the invariants the code relies on.

This module sits above ``store.db`` and the row types; ``open_db`` never calls it. Whoever opens a
workspace for use runs :func:`open_checked` (or :func:`check_database` after ``open_db``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

import store.db as _db  # SCHEMA_VERSION read through store.db, the version open_db migrates to
from store.errors import CorruptDatabaseError
from store.records import EditRow, JobRow
from store.schema import schema_version
from store.states import EditStatus, JobState

# Each invariant the code relies on: (SQL returning offending rows, message for the first one).
_JSON_COLUMNS = (
    ("jobs", "request_json"), ("jobs", "hparams_json"), ("edits", "request_json"), ("edits", "hparams_json"),
    ("edits", "timings_json"), ("base_models", "config_json"),
    ("jobs", "method_hparams_json"), ("edits", "method_hparams_json"),  # NULL passes: ReFACT has none
)
_INVARIANTS: tuple[tuple[str, str], ...] = (
    ("SELECT h.id AS id, h.head_seq AS v FROM histories h WHERE h.head_seq < 0 OR (h.head_seq > 0 AND NOT EXISTS "
     f"(SELECT 1 FROM edits e WHERE e.history_id = h.id AND e.seq = h.head_seq AND e.status = '{EditStatus.APPLIED}'))",
     "history {id} has head_seq {v}, which is not an applied edit of it"),
    ("SELECT e.history_id AS id, e.seq AS v FROM edits e JOIN histories h ON h.id = e.history_id "
     f"WHERE e.status = '{EditStatus.APPLIED}' AND e.seq > h.head_seq",
     "history {id} has an applied edit {v} beyond its head"),
    ("SELECT 0 AS id, m.value AS v FROM meta m WHERE m.key = 'current_history_id' AND NOT EXISTS "
     "(SELECT 1 FROM histories h WHERE CAST(h.id AS TEXT) = m.value)",
     "the current history {v!r} does not exist"),
    (f"SELECT id, state AS v FROM jobs WHERE state = '{JobState.DONE}' AND (edit_id IS NULL OR NOT EXISTS "
     "(SELECT 1 FROM edits e WHERE e.id = jobs.edit_id))",
     "job {id} is done but its edit is missing"),
) + tuple(
    (f"SELECT id, {col} AS v FROM {table} WHERE {col} IS NOT NULL AND "
     f"(NOT json_valid({col}) OR json_type({col}) != 'object')",
     f"{table} row {{id}} has invalid JSON in {col}")
    for table, col in _JSON_COLUMNS
)


def _undecodable_rows(db: sqlite_utils.Database, first_only: bool) -> list[str]:
    """Rows of the tables the commands read whose JSON does not decode into a request / hparams."""
    problems = []
    for table, row_type in (("jobs", JobRow), ("edits", EditRow)):
        cur = db.conn.execute(f"SELECT * FROM {table}")
        keys = [d[0] for d in cur.description]
        for values in cur:
            try:
                row_type.from_row(dict(zip(keys, values)))
            except CorruptDatabaseError as exc:
                problems.append(exc.what)
                if first_only:
                    return problems
    return problems


def check_database(db: sqlite_utils.Database, first_only: bool = False, full: bool = False) -> list[str]:
    """Problems that make a workspace database unusable (empty = healthy), read-only and cheap enough
    for every open: ``PRAGMA quick_check`` (``integrity_check`` and foreign keys with ``full``), the
    schema version, and the invariants above (heads point at applied edits, JSON columns hold
    objects, the current history exists, done jobs have their edit)."""
    problems: list[str] = []
    pragma = "integrity_check" if full else "quick_check"
    try:
        for (msg,) in db.conn.execute(f"PRAGMA {pragma}").fetchall():
            if msg != "ok":
                problems.append(f"integrity check: {msg}")
        if problems and first_only:
            return problems
        if full:
            for table, rowid, parent, _fk in db.conn.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"{table} row {rowid} points to a missing {parent} row")
        try:
            version = schema_version(db)
        except CorruptDatabaseError as exc:
            return problems + [exc.what]
        if version != _db.SCHEMA_VERSION:
            return problems + [f"schema version {version}, expected {_db.SCHEMA_VERSION}"]
        for sql, message in _INVARIANTS:
            for row in db.conn.execute(sql + ("" if full else " LIMIT 1")).fetchall():
                problems.append(message.format(id=row[0], v=row[1]))
                if first_only:
                    return problems
        problems += _undecodable_rows(db, first_only)
    except sqlite3.DatabaseError as exc:
        problems.append(f"{exc}")
    return problems


def require_healthy(db: sqlite_utils.Database) -> None:
    """Raise CorruptDatabaseError naming the first problem :func:`check_database` finds."""
    problems = check_database(db, first_only=True)
    if problems:
        raise CorruptDatabaseError(problems[0])


def open_checked(path: Path, create: bool = False, read_only: bool = False) -> sqlite_utils.Database:
    """``open_db`` then :func:`require_healthy`; the connection is closed again when the check fails."""
    db = _db.open_db(path, create=create, read_only=read_only)
    try:
        require_healthy(db)
    except BaseException:
        db.close()
        raise
    return db


def integrity_check(db: sqlite_utils.Database) -> list[str]:
    """Problems reported by ``PRAGMA integrity_check`` and ``foreign_key_check`` (empty = healthy)."""
    problems = [r[0] for r in db.conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
    for table, rowid, parent, _fk in db.conn.execute("PRAGMA foreign_key_check").fetchall():
        problems.append(f"{table} row {rowid} points to a missing {parent} row")
    return problems
