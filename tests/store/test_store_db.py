"""Connections, migrations, transactions and database-level guarantees."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

import store.db as store_db
from store.db import StoreError, data_version, get_meta, open_db, schema_version, set_meta, transaction
from store.integrity import integrity_check
from store.schema import MIGRATIONS, SCHEMA_VERSION

EXPECTED_TABLES = {
    "meta", "base_models", "histories", "jobs", "edits", "steps", "eval_runs", "metrics", "artifacts",
    "events", "leases",
}


def test_migrations_from_empty_create_every_table(db_path):
    db = open_db(db_path, create=True)
    assert EXPECTED_TABLES <= set(db.table_names())
    assert db.view_names() == ["latest_metrics"]
    assert schema_version(db) == SCHEMA_VERSION == len(MIGRATIONS)
    assert get_meta(db, "schema_version") == str(SCHEMA_VERSION)
    assert integrity_check(db) == []
    db.close()
    # Re-opening applies nothing and keeps the version.
    db = open_db(db_path)
    assert schema_version(db) == SCHEMA_VERSION
    db.close()


def test_connection_pragmas(db):
    conn = db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_missing_database_without_create(tmp_path):
    with pytest.raises(StoreError, match="no workspace database at .*refact init"):
        open_db(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_newer_database_is_refused(db_path):
    db = open_db(db_path, create=True)
    set_meta(db, "schema_version", str(SCHEMA_VERSION + 3))
    db.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 3}.*upgrade refact-tui"):
        open_db(db_path)


def test_pending_migration_applies_and_a_failing_one_rolls_back(db_path, monkeypatch):
    open_db(db_path, create=True).close()
    v2 = "CREATE TABLE extra (id INTEGER PRIMARY KEY, note TEXT) STRICT; INSERT INTO extra (note) VALUES ('a;b');"
    bad_v3 = "CREATE TABLE half (id INTEGER PRIMARY KEY); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS + [v2, bad_v3])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with pytest.raises(StoreError):
        open_db(db_path)
    # One transaction: neither v2 nor the half of v3 stayed.
    raw = sqlite3.connect(db_path)
    names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    assert "extra" not in names and "half" not in names
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    raw.close()

    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS + [v2])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    db = open_db(db_path)
    assert schema_version(db) == SCHEMA_VERSION + 1
    assert db.execute("SELECT note FROM extra").fetchall() == [("a;b",)]
    db.close()


def test_foreign_keys_are_enforced(db):
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        with transaction(db):
            db.execute(
                "INSERT INTO histories (base_model_id, name, created_at) VALUES (999, 'orphan', 0)"
            )
    assert db.execute("SELECT COUNT(*) FROM histories").fetchone()[0] == 0


def test_transaction_rolls_back_and_nests(db):
    with pytest.raises(RuntimeError):
        with transaction(db):
            set_meta(db, "a", "1")
            raise RuntimeError("boom")
    assert get_meta(db, "a") is None
    assert not db.conn.in_transaction

    with transaction(db):
        set_meta(db, "outer", "1")
        with pytest.raises(ValueError):
            with transaction(db):  # savepoint: only the inner part is undone
                set_meta(db, "inner", "1")
                raise ValueError
    assert get_meta(db, "outer") == "1"
    assert get_meta(db, "inner") is None


def test_data_version_changes_on_other_connections_commit(db, db_path):
    other = open_db(db_path)
    before = data_version(db)
    assert data_version(db) == before  # stable without writes
    set_meta(other, "x", "1")
    assert data_version(db) != before
    other.close()


def test_write_lock_timeout_is_a_store_error(db, db_path, monkeypatch):
    other = open_db(db_path)
    other.conn.execute("PRAGMA busy_timeout = 50")
    with transaction(db):
        set_meta(db, "held", "1")
        with pytest.raises(StoreError, match="locked by another process"):
            with transaction(other):
                pass
    other.close()


def _make_immutable(path: Path) -> bool:
    """Make a folder unwritable even for root (chmod alone does not stop root)."""
    path.chmod(0o555)
    if os.geteuid() != 0:
        return True
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def _undo_immutable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_read_only_folder_gives_a_clear_store_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    open_db(folder / "refact.db", create=True).close()
    if not _make_immutable(folder):
        _undo_immutable(folder)
        pytest.skip("cannot make a folder read-only for this user")
    try:
        for path, create in ((folder / "refact.db", False), (folder / "new.db", True)):
            with pytest.raises(StoreError) as info:
                open_db(path, create=create)
            message = str(info.value)
            assert str(path) in message and "\n" not in message
            assert "writable" in message or "read-only" in message
            assert info.value.__cause__ is None  # no sqlite3 error chained for the traceback
    finally:
        _undo_immutable(folder)


def test_garbage_file_is_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a valid workspace database"):
        open_db(path)


def test_threads_sharing_a_connection_take_turns(db):
    import threading
    import time

    set_meta(db, "counter", "0")
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(30):
                with transaction(db):
                    value = int(get_meta(db, "counter"))
                    time.sleep(0.0005)  # invite the other thread in between read and write
                    set_meta(db, "counter", str(value + 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert get_meta(db, "counter") == "60"  # no lost update
    assert not db.conn.in_transaction
