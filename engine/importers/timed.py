"""TIMED CSV (the TIME dataset of Orgad, Kawar and Belinkov).

Columns: old, new, (positive{i}, gt{i}) for i = 1..5, (negative{i}, gn{i}) for i = 1..5 and an
optional is_human_name. The edit prompt is ``old`` itself; every probe keeps its own text as source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.admission import RequestChecker
from engine.importers.base import CsvFormat, CsvTable, ImportResult, RowChecker, parse_csv_requests
from engine.request import EditRequest, Probe

N_PROBES = 5
REQUIRED = ["old", "new"]
REQUIRED += [f"{c}{i}" for i in range(1, N_PROBES + 1) for c in ("positive", "gt")]
REQUIRED += [f"{c}{i}" for i in range(1, N_PROBES + 1) for c in ("negative", "gn")]
OPTIONAL = ["is_human_name"]
FIELD_COLUMNS = {"prompt": "old", "source": "old", "target": "new"}
for _i in range(N_PROBES):
    for _group, _probe, _new in (("positives", "positive", "gt"), ("negatives", "negative", "gn")):
        FIELD_COLUMNS.update({
            f"{_group}[{_i}].prompt": f"{_probe}{_i + 1}",
            f"{_group}[{_i}].source": f"{_probe}{_i + 1}",
            f"{_group}[{_i}].target": f"{_new}{_i + 1}",
        })
_BOOLEANS = {"true": "True", "false": "False", "1": "True", "0": "False"}


def is_timed_header(header: list[str]) -> bool:
    """True if a CSV header looks like TIMED (has old, new and no Prompt)."""
    names = {h.strip().lower() for h in header}
    return {"old", "new"} <= names and "prompt" not in names


def parse_timed(
    table: CsvTable, path: Path, checker: RequestChecker | None, skip_invalid: bool
) -> ImportResult:
    """Read a parsed TIMED table into an ImportResult."""
    return parse_csv_requests(TIMED, table, path, checker, skip_invalid)


def _request(check: RowChecker, cells: dict[str, str], text: dict[str, Any]) -> EditRequest | None:
    extra: dict[str, str] = {}
    human = check.text(cells.get("is_human_name"), "is_human_name", required=False)
    if human is not None:
        if human.lower() in _BOOLEANS:
            extra["is_human_name"] = _BOOLEANS[human.lower()]
        else:
            check.add("is_human_name", f"must be True or False, got {human!r}")
    if check.problems:
        return None
    return EditRequest(
        prompt=text["old"],
        source=text["old"],
        target=text["new"],
        positives=tuple(
            Probe(text[f"positive{i}"], text[f"positive{i}"], text[f"gt{i}"]) for i in range(1, N_PROBES + 1)
        ),
        negatives=tuple(
            Probe(text[f"negative{i}"], text[f"negative{i}"], text[f"gn{i}"]) for i in range(1, N_PROBES + 1)
        ),
        extra=extra,
    )


TIMED = CsvFormat("timed", REQUIRED, OPTIONAL, FIELD_COLUMNS, _request)
