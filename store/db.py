"""Opening a workspace database, migrations, transactions and small query helpers.

Every connection runs in WAL mode with ``synchronous=NORMAL``, ``foreign_keys=ON`` and a 5 s busy
timeout, so one writer (the worker) and several short readers (TUI, CLI) can share the file.
Writes go through :func:`transaction` (``BEGIN IMMEDIATE``: the write lock is taken up front, so a
read-then-write inside it can never be interleaved with another writer).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import sqlite_utils

from store.errors import CorruptDatabaseError, NotFoundError, OutdatedSchemaError, StoreError
from store.schema import MIGRATIONS, SCHEMA_VERSION, schema_version

BUSY_TIMEOUT_MS = 5000
_savepoints = itertools.count(1)
_lock_guard = threading.Lock()


def _describe(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    low = text.lower()
    if "readonly" in low or "read-only" in low:
        return f"cannot write the workspace database {path}: it is read-only; check the folder permissions"
    if "unable to open" in low:
        return f"cannot open the workspace database {path}: check that the folder exists and is writable"
    if "locked" in low or "busy" in low:
        return (
            f"the workspace database {path} stayed locked by another process for over "
            f"{BUSY_TIMEOUT_MS // 1000} s; try again"
        )
    if "not a database" in low or "malformed" in low:
        return CorruptDatabaseError(f"{path}: {text}").args[0]
    if "disk" in low or "full" in low:
        return f"cannot write the workspace database {path}: {text}; free some disk space"
    return f"workspace database {path}: {text}"


def db_path_of(db: sqlite_utils.Database) -> str:
    """The file behind a connection (for messages)."""
    for _seq, name, file in db.conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return file or ":memory:"
    return "?"


def _is_corrupt(exc: sqlite3.Error) -> bool:
    low = str(exc).lower()
    return "not a database" in low or "malformed" in low


def _error(exc: sqlite3.Error, path: str) -> StoreError:
    """The StoreError for a sqlite3 error: CorruptDatabaseError for a damaged file."""
    if _is_corrupt(exc):
        return CorruptDatabaseError(f"{path}: {exc}")
    return StoreError(_describe(exc, path))


def folder_writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (a read-only mount or a folder without write access
    cannot hold the -shm file a WAL database needs, even for reading)."""
    return os.access(folder, os.W_OK)


def read_only_query(path: Path) -> str:
    """The URI query of a read-only connection: ``mode=ro``, plus ``immutable=1`` when the folder is not
    writable and no WAL content waits beside the file (a writer closed it cleanly): SQLite then reads
    the file as is, without the -shm it could not create there. A WAL with content needs the -shm."""
    wal = Path(f"{path}-wal")
    clean = not wal.exists() or wal.stat().st_size == 0
    return "?mode=ro&immutable=1" if clean and not folder_writable(path.parent) else "?mode=ro"


def open_db(path: Path, create: bool = False, read_only: bool = False) -> sqlite_utils.Database:
    """Open (and with ``create`` make) a workspace database and apply pending migrations.

    Raises StoreError when the file is missing (without ``create``), unreadable, read-only, or was
    written by a newer refact-tui, and CorruptDatabaseError when it is not a database at all. Without
    ``create`` nothing is ever created: an empty file or one without refact tables is refused, not
    initialised. The invariant check is separate (``store.integrity.open_checked``), so this module
    never depends on the row types.

    With ``read_only`` the file is opened ``mode=ro`` and never written (no WAL switch, no
    migration): a database of an older schema raises :class:`OutdatedSchemaError` instead.
    """
    path = Path(path)
    if read_only and create:
        raise ValueError("open_db: read_only and create exclude each other")
    if not create and not path.is_file():
        raise StoreError(f"no workspace database at {path}; run `refact init --model PATH` first")
    if not create and path.stat().st_size == 0:
        raise CorruptDatabaseError(f"{path} is an empty (0-byte) file")
    try:
        # Legacy transaction control (the default isolation_level) is what sqlite-utils expects.
        target, uri = (path.absolute().as_uri() + read_only_query(path), True) if read_only else (str(path), False)
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, uri=uri)
    except sqlite3.Error as exc:
        raise StoreError(_describe(exc, str(path))) from None
    try:
        db = sqlite_utils.Database(conn)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not read_only:  # a read-only connection keeps whatever journal mode the file has
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"cannot switch {path} to WAL mode (got {mode!r}); keep the workspace on a local disk"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
        if not create and schema_version(db) == 0:
            raise CorruptDatabaseError(f"{path} has no refact-tui tables")
        if read_only:
            _require_current(db, str(path))
        else:
            migrate(db)
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise _error(exc, str(path)) from None
    return db


def _statements(script: str) -> Iterator[str]:
    """Split a DDL script into complete statements (executescript would commit mid-transaction)."""
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            buf = ""
            if stmt.strip(";").strip():
                yield stmt
    if buf.strip(" \n\t;"):
        raise StoreError("incomplete SQL statement in a migration; this is a bug in refact-tui")


def _refuse_newer(current: int, path: str) -> None:
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {current} but this refact-tui knows only up to "
            f"{SCHEMA_VERSION}; upgrade refact-tui"
        )


def _require_current(db: sqlite_utils.Database, path: str) -> None:
    """For read-only opens: refuse a newer schema (upgrade refact-tui) and an older one (migrate)."""
    current = schema_version(db)
    _refuse_newer(current, path)
    if current < SCHEMA_VERSION:
        raise OutdatedSchemaError(path, current, SCHEMA_VERSION)


def migrate(db: sqlite_utils.Database) -> int:
    """Apply every pending migration in one transaction; returns the resulting version."""
    path = db_path_of(db)
    current = schema_version(db)
    _refuse_newer(current, path)
    if current == SCHEMA_VERSION:
        return current
    with transaction(db):
        # Re-read under the write lock: another process may have migrated in the meantime.
        current = schema_version(db)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for stmt in _statements(MIGRATIONS[version - 1]):
                db.execute(stmt)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [str(version)],
            )
        if current == 0:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('created_at', ?)", [repr(time.time())]
            )
    return SCHEMA_VERSION


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception).

    Nested use becomes a savepoint, so repository functions can be composed inside one caller's
    transaction and still roll back together. Threads sharing a connection take turns.
    """
    with _connection_lock(db):
        with _transaction(db) as handle:
            yield handle


def _connection_lock(db: sqlite_utils.Database) -> threading.RLock:
    # One connection shared by threads (e.g. a UI and its workers): without this, a second thread's
    # transaction would silently become a savepoint inside the first thread's.
    lock = getattr(db, "_refact_tx_lock", None)
    if lock is None:
        with _lock_guard:
            lock = getattr(db, "_refact_tx_lock", None)
            if lock is None:
                lock = threading.RLock()
                db._refact_tx_lock = lock  # type: ignore[attr-defined]
    return lock


@contextmanager
def _transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    conn = db.conn
    if conn.in_transaction:
        name = f"refact_sp_{next(_savepoints)}"
        db.execute(f"SAVEPOINT {name}")
        try:
            yield db
        except BaseException:
            if conn.in_transaction:
                db.execute(f"ROLLBACK TO {name}")
                db.execute(f"RELEASE {name}")
            raise
        else:
            db.execute(f"RELEASE {name}")
        return
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        raise _error(exc, db_path_of(db)) from None
    try:
        yield db
    except sqlite3.OperationalError as exc:
        _rollback(db)
        raise StoreError(_describe(exc, db_path_of(db))) from exc
    except sqlite3.DatabaseError as exc:
        _rollback(db)
        if _is_corrupt(exc):
            raise _error(exc, db_path_of(db)) from None
        raise
    except BaseException:
        _rollback(db)
        raise
    else:
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise StoreError(_describe(exc, db_path_of(db))) from None


@contextmanager
def read_snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A short deferred read transaction: all queries inside see the same committed state."""
    conn = db.conn
    if conn.in_transaction:
        yield db
        return
    conn.execute("BEGIN")
    try:
        yield db
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _rollback(db: sqlite_utils.Database) -> None:
    if db.conn.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:  # a damaged file can refuse even this; the connection is closed later
            pass


def fetch_all(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run a read and return every row as a dict; the cursor is exhausted at once (short read)."""
    try:
        cur = db.execute(sql, list(params))
        rows = cur.fetchall()
    except sqlite3.OperationalError as exc:
        raise _error(exc, db_path_of(db)) from None
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed", "file is not a database"
        if _is_corrupt(exc):
            raise _error(exc, db_path_of(db)) from None
        raise
    keys = [d[0] for d in cur.description or ()]
    return [dict(zip(keys, r)) for r in rows]


def fetch_one(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    """The first row of a read, or None."""
    rows = fetch_all(db, sql, params)
    return rows[0] if rows else None


def fetch_required(db: sqlite_utils.Database, sql: str, params: Sequence[Any], missing: str) -> dict[str, Any]:
    """The first row of a read; NotFoundError(``missing``) when there is none."""
    row = fetch_one(db, sql, params)
    if row is None:
        raise NotFoundError(missing)
    return row


def get_meta(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    """A value from the ``meta`` table."""
    row = fetch_one(db, "SELECT value FROM meta WHERE key = ?", [key])
    return row["value"] if row else default


def set_meta(db: sqlite_utils.Database, key: str, value: str) -> None:
    """Insert or replace a ``meta`` value."""
    with transaction(db):
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, str(value)],
        )


def data_version(db: sqlite_utils.Database) -> int:
    """Changes whenever another connection commits: a cheap guard before re-querying."""
    return int(db.conn.execute("PRAGMA data_version").fetchone()[0])


def now() -> float:
    """Epoch seconds (the unit of every time column)."""
    return time.time()


# The error types and the version reader live in store.errors and store.schema; store.db re-exports them.
__all__ = [
    "BUSY_TIMEOUT_MS", "CorruptDatabaseError", "NotFoundError", "OutdatedSchemaError", "StoreError", "data_version",
    "db_path_of", "fetch_all", "fetch_one", "fetch_required", "get_meta", "migrate", "now", "open_db",
    "read_snapshot", "schema_version", "set_meta", "transaction",
]
