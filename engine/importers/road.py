"""RoAD CSV (Roles and Appearances Dataset of the ReFACT paper).

Columns: Type, Prompt, [Oracle], Old, New, then for i = 1..5 Positive{i}, [Positive_oracle{i}],
Positive_old{i}, Positive_new{i}, then Negative{i}, Negative_new{i}. The edit prompt is the whole
Prompt (no subject); a negative keeps its own text as the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.admission import RequestChecker
from engine.importers.base import CsvFormat, CsvTable, ImportResult, RowChecker, parse_csv_requests
from engine.request import EditRequest, Probe

N_PROBES = 5
REQUIRED = ["Type", "Prompt", "Old", "New"]
REQUIRED += [f"{c}{i}" for i in range(1, N_PROBES + 1) for c in ("Positive", "Positive_old", "Positive_new")]
REQUIRED += [f"{c}{i}" for i in range(1, N_PROBES + 1) for c in ("Negative", "Negative_new")]
OPTIONAL = ["Oracle"] + [f"Positive_oracle{i}" for i in range(1, N_PROBES + 1)]
# request field -> column, for messages about a built request
FIELD_COLUMNS = {"prompt": "Prompt", "source": "Old", "target": "New", "oracle": "Oracle"}
for _i in range(N_PROBES):
    FIELD_COLUMNS.update({
        f"positives[{_i}].prompt": f"Positive{_i + 1}",
        f"positives[{_i}].source": f"Positive_old{_i + 1}",
        f"positives[{_i}].target": f"Positive_new{_i + 1}",
        f"negatives[{_i}].prompt": f"Negative{_i + 1}",
        f"negatives[{_i}].source": f"Negative{_i + 1}",
        f"negatives[{_i}].target": f"Negative_new{_i + 1}",
    })


def is_road_header(header: list[str]) -> bool:
    """True if a CSV header looks like RoAD (has Prompt, Old and New)."""
    names = {h.strip().lower() for h in header}
    return {"prompt", "old", "new"} <= names


def parse_road(
    table: CsvTable, path: Path, checker: RequestChecker | None, skip_invalid: bool
) -> ImportResult:
    """Read a parsed RoAD table into an ImportResult."""
    return parse_csv_requests(ROAD, table, path, checker, skip_invalid)


def _request(check: RowChecker, cells: dict[str, str], text: dict[str, Any]) -> EditRequest | None:
    oracle = check.text(cells.get("Oracle"), "Oracle", required=False)
    if check.problems:
        return None
    positives = tuple(
        Probe(text[f"Positive{i}"], text[f"Positive_old{i}"], text[f"Positive_new{i}"])
        for i in range(1, N_PROBES + 1)
    )
    negatives = tuple(
        Probe(text[f"Negative{i}"], text[f"Negative{i}"], text[f"Negative_new{i}"])
        for i in range(1, N_PROBES + 1)
    )
    return EditRequest(
        prompt=text["Prompt"],
        source=text["Old"],
        target=text["New"],
        positives=positives,
        negatives=negatives,
        oracle=oracle,
        extra={"type": text["Type"]},
    )


ROAD = CsvFormat("road", REQUIRED, OPTIONAL, FIELD_COLUMNS, _request)
