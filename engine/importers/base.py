"""Shared types of the request importers and the checks every format goes through."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from engine.admission import RequestChecker, token_count
from engine.errors import EngineError
from engine.request import EditRequest, RequestError, clean_text

DEFAULT_MAX_TOKENS = 77  # CLIP's context, special tokens included


class ImportFileError(EngineError):
    """The file cannot be read at all: missing, empty, not UTF-8 or of an unknown format."""


@dataclass(frozen=True)
class ImportProblem:
    """One thing wrong in a request file. ``row`` is the 1-based data row (CSV), line (JSONL) or list
    item (JSON); None for the header or the file as a whole. ``column`` is a column or field name."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f", row {self.row}" if self.row is not None else ", header")
        if self.column:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ImportedRow:
    """A valid request, the row it came from and the row's own hyperparameter overrides (JSON rows'
    ``hparams`` object; validated, applied onto the import's hyperparameters)."""

    row: int
    request: EditRequest
    hparams: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DuplicateRow:
    """A row whose request has the same ``EditRequest.key()`` as an earlier row; it is not imported."""

    row: int
    first_row: int
    key: tuple[str, str, str, str]


@dataclass
class ImportResult:
    """What a request file holds: valid requests, problems, duplicates and skipped rows.

    When ``errors`` is non-empty and skipping was not asked for, ``requests`` is empty.
    """

    path: Path
    format: str
    requests: list[ImportedRow] = field(default_factory=list)
    errors: list[ImportProblem] = field(default_factory=list)
    duplicates: list[DuplicateRow] = field(default_factory=list)
    skipped_rows: list[int] = field(default_factory=list)  # invalid rows left out (skip_invalid=True)
    total_rows: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was wrong in the file."""
        return not self.errors

    def edit_requests(self) -> list[EditRequest]:
        """The imported requests, in file order."""
        return [r.request for r in self.requests]


@dataclass
class RowOutcome:
    """A parser's verdict on one row: a request, or the problems that stopped it."""

    row: int
    request: EditRequest | None
    problems: list[ImportProblem]
    hparams: dict[str, Any] = field(default_factory=dict)


class RowChecker:
    """Collects the problems of one row while its cells are read."""

    def __init__(self, file: str, row: int) -> None:
        self.file = file
        self.row = row
        self.problems: list[ImportProblem] = []

    def add(self, column: str | None, message: str) -> None:
        self.problems.append(ImportProblem(self.file, self.row, column, message))

    def text(self, value: Any, column: str, *, required: bool = True) -> str | None:
        """A cleaned string cell; records a problem for a wrong type, bad characters or an empty cell."""
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.add(column, "is empty; fill it in or remove the row")
            return None
        if not isinstance(value, str):
            self.add(column, f"must be text, got {type(value).__name__}")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.add(column, "holds an invalid character (a lone surrogate); fix the text")
            return None
        return clean_text(value)


def finish_request(
    check: RowChecker,
    request: EditRequest,
    checker: RequestChecker | None,
    columns: dict[str, str] | None = None,
    hparams: dict[str, Any] | None = None,
) -> RowOutcome:
    """Validate a built request (RequestError rules; with a ``checker`` every text the worker will
    encode, templates included, and the subject lookup) and wrap it as a RowOutcome.

    ``columns`` renames request fields to the file's own column names in messages.
    """
    columns = columns or {}
    try:
        request.validate()
    except RequestError as exc:
        message = str(exc)
        first = message.split(" ", 1)[0]
        column = ("target" if "same text" in message else first if first in ("prompt", "source", "target")
                  else "subject" if "subject" in message else None)
        check.add(columns.get(column or "", column), message)
    hparams = dict(hparams or {})
    if checker is not None and "templates" in hparams:
        checker = replace(checker, templates=tuple(hparams["templates"]))
    if checker is not None and not check.problems:
        for problem in checker.problems(request):
            check.add(columns.get(problem.field, problem.field), problem.message)
    return RowOutcome(check.row, None if check.problems else request, check.problems, hparams)


def count_tokens(tokenizer: Any, text: str) -> int | None:
    """Number of token ids including special tokens, or None if the tokenizer fails on the text."""
    return token_count(tokenizer, text)


def collect(
    path: Path,
    fmt: str,
    outcomes: Iterable[RowOutcome],
    header_problems: list[ImportProblem],
    skip_invalid: bool,
    unparsed_rows: int = 0,
) -> ImportResult:
    """Turn per-row outcomes into an ImportResult: duplicates, all-or-nothing unless skipping.

    ``unparsed_rows`` counts data rows that a broken header kept from being read at all.
    """
    result = ImportResult(path=path, format=fmt, errors=list(header_problems))
    result.total_rows = unparsed_rows
    result.skipped_rows = list(range(1, unparsed_rows + 1))
    first_seen: dict[tuple[str, str, str, str], int] = {}
    valid: list[ImportedRow] = []
    for outcome in outcomes:
        result.total_rows += 1
        if outcome.request is None:
            result.errors.extend(outcome.problems)
            result.skipped_rows.append(outcome.row)
            continue
        key = outcome.request.key()
        if key in first_seen:
            result.duplicates.append(DuplicateRow(outcome.row, first_seen[key], key))
            continue
        first_seen[key] = outcome.row
        valid.append(ImportedRow(outcome.row, outcome.request, outcome.hparams))
    if result.errors and not skip_invalid:
        result.skipped_rows = []
        valid = []
    result.requests = valid
    return result


# ---------------------------------------------------------------------------------------------
# CSV helpers shared by the RoAD and TIMED readers


@dataclass
class CsvTable:
    """A parsed CSV: cleaned header names and the raw data rows (lists of cells)."""

    header: list[str]
    rows: list[list[str]]


def read_csv(text: str, file: str) -> CsvTable:
    """Parse CSV text; ImportFileError when it has no header or is not CSV at all."""
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ImportFileError(f"{file} is not a readable CSV file ({exc}); check its quoting") from None
    records = [r for r in records if any(cell.strip() for cell in r)]
    if not records:
        raise ImportFileError(f"{file} has no header row; it is not a request CSV")
    header = [h.strip() for h in records[0]]
    return CsvTable(header=header, rows=records[1:])


def check_header(
    table: CsvTable, file: str, required: list[str], optional: list[str]
) -> tuple[dict[str, int], list[ImportProblem], bool]:
    """Map canonical column names to positions (case-insensitive), reporting missing, unknown,
    duplicated and unnamed columns. The flag is True when the rows cannot be read at all (a required
    column is missing or doubled, or a column has no name); an unknown column alone is not fatal."""
    canonical = {name.lower(): name for name in required + optional}
    positions: dict[str, int] = {}
    problems: list[ImportProblem] = []
    for i, name in enumerate(table.header):
        if not name:
            problems.append(ImportProblem(file, None, f"#{i + 1}", "column has no name; name it or delete it"))
            continue
        known = canonical.get(name.lower())
        if known is None:
            problems.append(ImportProblem(file, None, name, "unknown column; remove it or fix its name"))
        elif known in positions:
            problems.append(ImportProblem(file, None, name, "column appears twice; keep one"))
        else:
            positions[known] = i
    for name in required:
        if name not in positions:
            problems.append(ImportProblem(file, None, name, "required column is missing; add it"))
    fatal = any(not p.message.startswith("unknown column") for p in problems)
    return positions, problems, fatal


def row_cells(table: CsvTable, index: int, positions: dict[str, int], check: RowChecker) -> dict[str, str]:
    """The cells of data row ``index`` (0-based) by column name; a wrong cell count is a problem."""
    cells = table.rows[index]
    if len(cells) < len(table.header):
        missing = [name or f"#{i + 1}" for i, name in enumerate(table.header) if i >= len(cells)]
        cut = " (the file looks cut off)" if index == len(table.rows) - 1 else ""
        check.add(None, f"is short of {len(missing)} column(s){cut}: missing {', '.join(missing)}; "
                        "complete the row or remove it")
    elif len(cells) > len(table.header):
        check.add(None, f"has {len(cells)} cells but the header has {len(table.header)}; check commas and quotes")
    return {name: cells[pos] if pos < len(cells) else "" for name, pos in positions.items()}


# Reads a row's optional cells and builds its request from the required ``text`` cells; returns None
# (building nothing) when ``check`` holds problems by then.
CsvRowBuilder = Callable[[RowChecker, dict[str, str], dict[str, Any]], EditRequest | None]


@dataclass(frozen=True)
class CsvFormat:
    """One CSV request format: its columns, its field -> column names for messages, its row builder."""

    name: str
    required: list[str]
    optional: list[str]
    field_columns: dict[str, str]
    build: CsvRowBuilder


def parse_csv_requests(
    fmt: CsvFormat, table: CsvTable, path: Path, checker: RequestChecker | None, skip_invalid: bool
) -> ImportResult:
    """Check a parsed table's header against ``fmt``, build and validate a request per row, collect."""
    file = str(path)
    positions, header_problems, fatal = check_header(table, file, fmt.required, fmt.optional)
    if fatal:
        return collect(path, fmt.name, [], header_problems, skip_invalid, unparsed_rows=len(table.rows))
    outcomes = _csv_outcomes(fmt, table, positions, file, checker)
    return collect(path, fmt.name, outcomes, header_problems, skip_invalid)


def _csv_outcomes(
    fmt: CsvFormat, table: CsvTable, positions: dict[str, int], file: str, checker: RequestChecker | None
) -> Iterator[RowOutcome]:
    for index in range(len(table.rows)):
        check = RowChecker(file, index + 1)
        cells = row_cells(table, index, positions, check)
        text = {name: check.text(cells[name], name) for name in fmt.required}
        request = fmt.build(check, cells, text)
        if request is None:
            yield RowOutcome(check.row, None, check.problems)
        else:
            yield finish_request(check, request, checker, fmt.field_columns)
