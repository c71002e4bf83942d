"""`refact_tui/services/` holds no SQL: every query lives in `store/` (e.g. store/reads.py)."""

from __future__ import annotations

import re
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "refact_tui" / "services"
# A statement in a string, or a call that runs one on a connection.
SQL = re.compile(
    r"\b(SELECT\s[\s\S]*?\sFROM|UPDATE\s+\w+\s+SET|INSERT\s+(OR\s+\w+\s+)?INTO|DELETE\s+FROM|PRAGMA\s+\w+)\b"
    r"|\.execute(many|script)?\(|\bfetch_(all|one|required)\(|\bBEGIN\b|\bCOMMIT\b"
)


def sql_offenders(folder: Path = SERVICES) -> list[str]:
    """``path:line: text`` for every line of a module under ``folder`` that holds SQL."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SQL.search(line):
                out.append(f"{path.relative_to(folder.parent.parent).as_posix()}:{n}: {line.strip()}")
    return out


def test_the_scan_finds_sql_in_a_module(tmp_path):
    (tmp_path / "view.py").write_text(
        'rows = fetch_all(db, "SELECT * FROM jobs WHERE id = ?", [1])\n'
        'db.execute("UPDATE edits SET kind = 1 WHERE id = 2")\n'
        'text = "the selected update"\n'
    )
    found = sql_offenders(tmp_path)
    assert [line.split(":")[1] for line in found] == ["1", "2"]


def test_services_hold_no_sql():
    offenders = sql_offenders()
    assert not offenders, "SQL in refact_tui/services/ (move it into store/):\n" + "\n".join(offenders)
