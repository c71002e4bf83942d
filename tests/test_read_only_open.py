"""Read commands open the workspace read-only: an older schema is refused, byte for byte untouched;
write commands (and `refact migrate`) upgrade it in one transaction."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import store.db as store_db
from refact_tui.cli.main import app
from refact_tui.services.workspace import BaseModelInfo, Workspace, create_workspace
from store.db import OutdatedSchemaError, StoreError, open_db, schema_version, set_meta
from store.schema import MIGRATIONS, SCHEMA_VERSION

runner = CliRunner()
# A migration this refact-tui "knows" and the workspace file does not have yet (the file is older).
NEXT = "CREATE TABLE future_notes (id INTEGER PRIMARY KEY, note TEXT NOT NULL) STRICT;"
READ_COMMANDS = [["history"], ["histories"], ["show", "1"], ["queue", "ls"], ["bench", "ls"], ["bench", "show", "1"],
                 ["stats", "ls"]]


def invoke(root: Path, *args: str):
    return runner.invoke(app, ["--workspace", str(root), *args])


def files_of(root: Path) -> dict[str, str]:
    """sha256 of refact.db and of its WAL: a write would land in either (a read-only connection may
    create an empty WAL beside the file, which holds nothing)."""
    out = {}
    for name in ("refact.db", "refact.db-wal"):
        p = root / name
        if p.exists() and p.stat().st_size:
            out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    info = BaseModelInfo("tiny", "/models/tiny", "sd-pipeline", "clip", "e" * 64, {"num_layers": 4})
    create_workspace(tmp_path / "ws", info).close()
    return tmp_path / "ws"


@pytest.fixture
def older(root: Path, monkeypatch) -> Path:
    """The workspace at ``root`` as seen by a refact-tui one schema version ahead of it."""
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS + [NEXT])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    return root


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c))
def test_read_command_refuses_an_older_schema_without_writing(older: Path, command):
    before = files_of(older)
    r = invoke(older, *command)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"older refact-tui (schema {SCHEMA_VERSION} < {SCHEMA_VERSION + 1})" in lines[0]
    assert "run `refact migrate`" in lines[0]
    assert files_of(older) == before
    raw = sqlite3.connect(older / "refact.db")
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    raw.close()


def test_doctor_reports_an_older_schema_without_writing(older: Path):
    before = files_of(older)
    r = invoke(older, "doctor", "--json")
    assert r.exit_code == 0, r.output
    assert "older refact-tui" in r.stdout and "refact migrate" in r.stdout
    assert files_of(older) == before


def test_tui_startup_migrates_and_the_poller_refuses_an_older_schema(older: Path, monkeypatch):
    from refact_tui.tui import app as tui_app
    from refact_tui.tui.poller import StorePoller

    before = files_of(older)
    with pytest.raises(OutdatedSchemaError):  # the poller only reads: it never upgrades
        StorePoller(older / "refact.db")
    assert files_of(older) == before
    started = []

    class FakeApp:
        def __init__(self, root):
            self.root = root

        def run(self):
            started.append(self.root)

    monkeypatch.setattr(tui_app, "RefactApp", FakeApp)
    tui_app.run_tui(older)  # the TUI writes, so it upgrades like a write command
    assert started == [older]
    db = open_db(older / "refact.db", read_only=True)
    assert schema_version(db) == SCHEMA_VERSION + 1
    db.close()
    StorePoller(older / "refact.db").close()


def test_migrate_upgrades_then_reads_work(older: Path):
    r = invoke(older, "migrate")
    assert r.exit_code == 0, r.output
    assert f"from schema {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}" in r.stdout
    db = open_db(older / "refact.db", read_only=True)
    assert schema_version(db) == SCHEMA_VERSION + 1
    assert db.execute("SELECT COUNT(*) FROM future_notes").fetchone()[0] == 0
    db.close()
    assert invoke(older, "history").exit_code == 0
    again = invoke(older, "migrate")
    assert again.exit_code == 0 and "already at schema" in again.stdout


def test_write_command_migrates(older: Path):
    r = invoke(older, "queue", "clear")
    assert r.exit_code == 0, r.output
    raw = sqlite3.connect(older / "refact.db")
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION + 1)
    assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'future_notes'").fetchone() is not None
    raw.close()


def test_read_command_on_a_current_schema_reads_and_writes_nothing(root: Path):
    before = files_of(root)
    r = invoke(root, "history", "--json")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "[]"
    assert files_of(root) == before


def test_read_only_connection_refuses_writes(root: Path):
    ws = Workspace.open(root, read_only=True)
    try:
        assert ws.history().name == "main"
        with pytest.raises(StoreError, match="read-only"):
            set_meta(ws.db, "x", "1")
    finally:
        ws.close()
    with pytest.raises(ValueError):
        open_db(root / "refact.db", create=True, read_only=True)


def test_a_first_schema_workspace_is_read_refused_untouched_and_write_migrated(tmp_path: Path, monkeypatch):
    """A workspace written at schema 1 (every later migration pending): reads refuse and leave it as it
    is; a write command runs the real migration chain and keeps its rows."""
    with monkeypatch.context() as mp:
        mp.setattr(store_db, "SCHEMA_VERSION", 1)
        info = BaseModelInfo("tiny", "/models/tiny", "sd-pipeline", "clip", "e" * 64, {"num_layers": 4})
        create_workspace(tmp_path / "ws", info, history="old-line").close()
    root = tmp_path / "ws"
    before = files_of(root)
    r = invoke(root, "histories")
    if SCHEMA_VERSION > 1:
        assert r.exit_code == 1 and f"(schema 1 < {SCHEMA_VERSION})" in r.stderr
    assert files_of(root) == before
    assert invoke(root, "queue", "clear").exit_code == 0
    out = invoke(root, "histories", "--json")
    assert out.exit_code == 0, out.output
    assert [h["history"]["name"] for h in json.loads(out.stdout)] == ["old-line"]
    db = open_db(root / "refact.db", read_only=True)
    assert schema_version(db) == SCHEMA_VERSION
    db.close()
