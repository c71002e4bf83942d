"""Read edit-request files: RoAD CSV, TIMED CSV, ICEB CSV, our JSON Lines and JSON.

``load_requests(path)`` detects the format from the extension and the header, validates every
row and returns an ``ImportResult``; a file with any problem imports nothing unless
``skip_invalid=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.admission import RequestChecker
from engine.importers.base import (
    DEFAULT_MAX_TOKENS,
    DuplicateRow,
    ImportedRow,
    ImportFileError,
    ImportProblem,
    ImportResult,
    read_csv,
)
from engine.importers.iceb import is_iceb_header, parse_iceb, read_class_prompts
from engine.importers.jsonl import parse_json, parse_jsonl
from engine.importers.road import is_road_header, parse_road
from engine.importers.timed import is_timed_header, parse_timed

__all__ = [
    "FORMATS",
    "DuplicateRow",
    "ImportFileError",
    "ImportProblem",
    "ImportResult",
    "ImportedRow",
    "detect_format",
    "load_requests",
]

FORMATS = ("auto", "road", "timed", "iceb", "jsonl", "json", "csv")
MAX_FILE_BYTES = 64 * 1024 * 1024  # far above any real request file; guards against a wrong path


ENCODING_ERRORS = ("strict", "replace")


def read_text(path: Path, encoding_errors: str = "strict") -> str:
    """The file's text (UTF-8, BOM removed); ImportFileError when missing, unreadable, empty or (with
    ``encoding_errors="strict"``) not valid UTF-8, naming the first bad byte's offset."""
    if encoding_errors not in ENCODING_ERRORS:
        raise ImportFileError(f"unknown --encoding-errors {encoding_errors!r}; use strict or replace")
    if not path.exists():
        raise ImportFileError(f"{path} does not exist; check the path")
    if not path.is_file():
        raise ImportFileError(f"{path} is not a file; pass a .csv, .jsonl or .json file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImportFileError(f"{path} is over {MAX_FILE_BYTES // 2**20} MB; that is not a request file")
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise ImportFileError(
            f"{path} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}); save it as UTF-8 "
            "or pass --encoding-errors replace to read bad bytes as U+FFFD") from None
    if "\x00" in text:
        raise ImportFileError(f"{path} contains NUL bytes; it is not a text request file")
    if not text.strip():
        raise ImportFileError(f"{path} is empty; add at least one request")
    return text


def detect_format(path: Path, text: str) -> str:
    """"road", "timed", "iceb", "jsonl" or "json", from the extension, then the content."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or suffix == ".ndjson":
        return "jsonl"
    if suffix == ".json":
        return "json" if text.lstrip().startswith("[") else "jsonl"
    if suffix != ".csv":
        head = text.lstrip()
        if head.startswith("["):
            return "json"
        if head.startswith("{"):
            return "jsonl"
    return _csv_flavour(path, text)


def _csv_flavour(path: Path, text: str) -> str:
    header = read_csv(text, str(path)).header
    if is_iceb_header(header):
        return "iceb"
    if is_road_header(header):
        return "road"
    if is_timed_header(header):
        return "timed"
    raise ImportFileError(
        f"{path} is not a known request format (expected RoAD CSV with Prompt/Old/New, TIMED CSV with "
        "old/new, ICEB CSV with source/dest/prompts, .jsonl or .json); fix the header or pass --format"
    )


def load_requests(
    path: str | Path,
    format: str = "auto",
    skip_invalid: bool = False,
    tokenizer: Any | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    checker: RequestChecker | None = None,
    encoding_errors: str = "strict",
    negatives: str | Path | None = None,
) -> ImportResult:
    """Read and validate a request file.

    ``format`` is "auto", "road", "timed", "iceb", "csv" (RoAD, TIMED or ICEB by header), "jsonl" or
    "json". ``negatives`` (ICEB only) is a class-prompt file (``modify_imgnet_prompts.csv``) that the
    specificity probes are drawn from.
    ``checker`` checks every text the worker will encode (all templates, every encoder's limit);
    a bare ``tokenizer`` stands for ``RequestChecker.single(tokenizer, max_tokens)`` with the
    default templates. ``encoding_errors`` "replace" reads invalid UTF-8 as U+FFFD instead of
    refusing the file. Problems are returned in ``ImportResult.errors``; only an unreadable, empty,
    non-UTF-8 or unrecognisable file (or ``negatives`` file, or ``negatives`` with another format)
    raises ImportFileError.
    """
    if checker is None and tokenizer is not None:
        checker = RequestChecker.single(tokenizer, max_tokens)
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise ImportFileError(f"unknown import format {format!r}; use one of {', '.join(FORMATS)}")
    text = read_text(path, encoding_errors)
    fmt = detect_format(path, text) if format == "auto" else format
    if fmt == "csv":
        fmt = _csv_flavour(path, text)
    if negatives is not None and fmt != "iceb":
        raise ImportFileError(f"--negatives applies to ICEB files only and {path} is {fmt}; leave it out")
    if fmt == "iceb":
        classes = []
        if negatives is not None:
            neg_path = Path(negatives).expanduser()
            classes = read_class_prompts(neg_path, read_text(neg_path, encoding_errors))
        return parse_iceb(read_csv(text, str(path)), path, checker, skip_invalid, classes)
    if fmt == "jsonl":
        return parse_jsonl(text, path, checker, skip_invalid)
    if fmt == "json":
        return parse_json(text, path, checker, skip_invalid)
    table = read_csv(text, str(path))
    parse = parse_road if fmt == "road" else parse_timed
    return parse(table, path, checker, skip_invalid)
