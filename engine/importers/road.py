"""RoAD CSV (Roles and Appearances Dataset of the ReFACT paper).

Columns: Type, Prompt, [Oracle], Old, New, then for i = 1..5 Positive{i}, [Positive_oracle{i}],
Positive_old{i}, Positive_new{i}, then Negative{i}, Negative_new{i}. The edit prompt is the whole
Prompt (no subject); a negative keeps its own text as the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from engine.importers.base import (
    CsvTable,
    ImportResult,
    RowChecker,
    RowOutcome,
    check_header,
    collect,
    finish_request,
    row_cells,
)
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
    table: CsvTable, path: Path, tokenizer: Any | None, max_tokens: int, skip_invalid: bool
) -> ImportResult:
    """Read a parsed RoAD table into an ImportResult."""
    file = str(path)
    positions, header_problems, fatal = check_header(table, file, REQUIRED, OPTIONAL)
    if fatal:
        return collect(path, "road", [], header_problems, skip_invalid, unparsed_rows=len(table.rows))
    outcomes = _rows(table, positions, file, tokenizer, max_tokens)
    return collect(path, "road", outcomes, header_problems, skip_invalid)


def _rows(
    table: CsvTable, positions: dict[str, int], file: str, tokenizer: Any | None, max_tokens: int
) -> Iterator[RowOutcome]:
    for index in range(len(table.rows)):
        check = RowChecker(file, index + 1)
        cells = row_cells(table, index, positions, check)
        text = {name: check.text(cells[name], name) for name in REQUIRED}
        oracle = check.text(cells.get("Oracle"), "Oracle", required=False)
        if check.problems:
            yield RowOutcome(check.row, None, check.problems)
            continue
        positives = tuple(
            Probe(text[f"Positive{i}"], text[f"Positive_old{i}"], text[f"Positive_new{i}"])
            for i in range(1, N_PROBES + 1)
        )
        negatives = tuple(
            Probe(text[f"Negative{i}"], text[f"Negative{i}"], text[f"Negative_new{i}"])
            for i in range(1, N_PROBES + 1)
        )
        request = EditRequest(
            prompt=text["Prompt"],
            source=text["Old"],
            target=text["New"],
            positives=positives,
            negatives=negatives,
            oracle=oracle,
            extra={"type": text["Type"]},
        )
        yield finish_request(check, request, tokenizer, max_tokens, FIELD_COLUMNS)
