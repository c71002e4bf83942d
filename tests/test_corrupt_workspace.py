"""Damaged or odd workspace databases: every command gives the same one line and exit 1, and a read
never creates or rewrites the database."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from typer.testing import CliRunner
from worker_helpers import workspace_with_edits

COMMANDS = (["history"], ["histories"], ["show", "1"], ["run", "--device", "cpu"], ["rollback", "1"],
            ["export", "OUT", "--deltas-only"], ["queue", "ls"])
TAIL = "restore it from a backup or run `refact doctor`"


def _sql(*statements):
    def damage(db_path):
        con = sqlite3.connect(str(db_path))
        for stmt in statements:
            con.execute(stmt)
        con.commit()
        con.close()
    return damage


def _malformed(db_path):
    size = db_path.stat().st_size
    assert size > 4 * 4096
    with open(db_path, "r+b") as f:  # trash the b-tree pages after the schema page
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))


def _empty(db_path):
    db_path.write_bytes(b"")


DAMAGES = {
    "malformed image": (_malformed, "malformed"),
    "schema_version abc": (_sql("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'"), "schema_version is 'abc'"),
    "bad request_json": (_sql("UPDATE jobs SET request_json = '{not json' WHERE id = 1"), "jobs row 1 has invalid JSON"),
    "bad hparams_json": (_sql("UPDATE edits SET hparams_json = '[1, 2]' WHERE id = 2"), "edits row 2 has invalid JSON"),
    "unreadable request": (_sql("""UPDATE edits SET request_json = '{"prompt": 5}' WHERE id = 1"""),
                           "edits row 1 has an unreadable request_json"),
    "head beyond last edit": (_sql("UPDATE histories SET head_seq = 99"), "head_seq 99"),
    "0-byte file": (_empty, "empty (0-byte)"),
}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("healthy") / "w"
    ws, _jobs, _summary = workspace_with_edits(root, model_dir, 2)
    ws.close()
    con = sqlite3.connect(str(root / "refact.db"))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return root


@pytest.mark.parametrize("name", list(DAMAGES))
def test_every_command_refuses_a_damaged_database_with_one_line(name, healthy, tmp_path):
    from refact_tui.cli.main import app

    damage, what = DAMAGES[name]
    root = tmp_path / "w"
    shutil.copytree(healthy, root)
    for extra in ("refact.db-wal", "refact.db-shm"):
        (root / extra).unlink(missing_ok=True)
    db_path = root / "refact.db"
    damage(db_path)
    before = db_path.read_bytes()
    runner = CliRunner()
    for cmd in COMMANDS:
        args = [str(tmp_path / "out") if a == "OUT" else a for a in cmd]
        r = runner.invoke(app, ["--workspace", str(root), *args])
        err = r.stderr.strip()
        assert r.exit_code == 1, (cmd, r.exception, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: not a valid workspace database: "), (cmd, err)
        assert what in err and err.endswith(TAIL), (cmd, err)
        assert db_path.read_bytes() == before, cmd  # a refused open never rewrites (or re-creates) it
    assert not (tmp_path / "out").exists()  # the export wrote nothing


def _immutable(path, on: bool) -> bool:
    import os
    import subprocess

    if os.geteuid() != 0:
        path.chmod(0o444 if on else 0o644)
        return True
    try:
        return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_export_deltas_only_of_a_read_only_workspace_succeeds_without_writing(healthy, tmp_path):
    import json

    from refact_tui.cli.main import app

    root = tmp_path / "w"
    shutil.copytree(healthy, root)
    db_path = root / "refact.db"
    before = db_path.read_bytes()
    if not _immutable(db_path, True):
        pytest.skip("cannot make a file read-only here")
    try:
        r = CliRunner().invoke(app, ["--workspace", str(root), "export", str(tmp_path / "out"), "--deltas-only"])
    finally:
        _immutable(db_path, False)
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [e["seq"] for e in manifest["edits"]] == [1, 2]
    assert db_path.read_bytes() == before
