"""Fuzz targets shared by tests/test_fuzz_hostile.py (bounded) and benchmarks/fuzz_campaign.py (1,000 cases).

Each target takes one generated case and returns "accepted" or "refused"; it raises FuzzFailure
when the code under test raised anything but a one-line user error (a traceback) or left something
half-written (jobs queued from a refused file or command, an output folder after a refusal).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# Text that has broken things: markup, terminal controls, zero-width and bidi characters, line and
# paragraph separators, surrogates, emoji that are several tokens each.
HOSTILE_CHARS = list(string.ascii_letters[:12]) + list(" .,!?()[]/\\'\"{}") + [
    "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9b", "\u200b", "\u200d", "\u202e", "\u2028", "\u2029",
    "\ufeff", "\ufffd", "é", "ß", "漢", "🦩", "👨\u200d👩\u200d👧", "\t", "\r", "\n",
]
HOSTILE_PIECES = ["[/]", "[bold]", "\x1b]0;t\x07", "\x1b[31m", "{}", "[link=x]", "\\", "%s", "${x}"]


class FuzzFailure(AssertionError):
    """The code under test crashed or left something half-written."""


def hostile_text(max_size: int = 24) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(HOSTILE_CHARS), st.sampled_from(HOSTILE_PIECES))
    return st.lists(piece, max_size=max_size).map("".join)


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                       st.floats(allow_nan=False, allow_infinity=False), hostile_text(12))
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(hostile_text(6), inner, max_size=3)),
                        max_leaves=max_leaves)


def is_user_error(exc: BaseException) -> bool:
    from refact_tui.services.errors import user_message

    return user_message(exc) is not None


# ---- CLI hyperparameter values ---------------------------------------------------------------

HPARAM_OPTIONS = ["--layer", "--lr", "--max-steps", "--prob-threshold", "--weight-decay", "--clamp-factor",
                  "--similarity", "--temperature", "--ridge", "--preserve"]
SPECIAL_NUMBERS = ["inf", "-inf", "nan", "NaN", "1e400", "-1e400", "-0", "0", "1e-320", "0x10", "1_000", "",
                   "99999999999999999999999", "-1", "1", "0.5", "4", "l2", "cosine"]


def hparam_cases() -> st.SearchStrategy[tuple[str, str]]:
    value = st.one_of(
        st.sampled_from(SPECIAL_NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=-(10**25), max_value=10**25).map(str),
        hostile_text(8).filter(lambda s: "\x00" not in s and "\ud800" not in s),
    )
    return st.tuples(st.sampled_from(HPARAM_OPTIONS + ["--max"]), value)


def _job_count(root: Path) -> int:
    from store.db import open_db

    db = open_db(root / "refact.db")
    try:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        db.close()


def run_hparam_case(root: Path, option: str, value: str) -> str:
    """`refact queue add ... OPTION VALUE` (or `refact run --max VALUE`): exit 0, 1 or 2, never a
    traceback; a refused command queues nothing, an accepted one stores valid hyperparameters."""
    from typer.testing import CliRunner

    from engine.methods.refact.hparams import ReFACTHParams
    from refact_tui.cli.main import app

    before = _job_count(root)
    if option == "--max":
        args = ["--workspace", str(root), "run", "--max", value, "--device", "cpu"]
    else:
        args = ["--workspace", str(root), "queue", "add", "--prompt", "A cat", "--source", "a cat", "--target",
                "a dog", "--allow-duplicate", "--json", option, value]
    r = CliRunner().invoke(app, args)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise FuzzFailure(f"{option} {value!r}: {type(r.exception).__name__}: {r.exception}")
    if "Traceback" in r.output:
        raise FuzzFailure(f"{option} {value!r}: traceback in the output")
    after = _job_count(root)
    if option == "--max":
        return "accepted" if r.exit_code == 0 else "refused"
    if r.exit_code == 0:
        if after != before + 1:
            raise FuzzFailure(f"{option} {value!r}: accepted but {after - before} job(s) added")
        ReFACTHParams.from_dict(json.loads(r.stdout)["hparams"])  # what was stored is valid
        return "accepted"
    if r.exit_code not in (1, 2) or after != before:
        raise FuzzFailure(f"{option} {value!r}: exit {r.exit_code}, {after - before} job(s) added")
    if r.exit_code == 1 and len(r.stderr.strip().splitlines()) != 1:
        raise FuzzFailure(f"{option} {value!r}: the error is not one line: {r.stderr!r}")
    return "refused"


# ---- request files ---------------------------------------------------------------------------

PLAUSIBLE = ["A cat", "The Dalai Lama.", "The [/] King of Spain", "Prince \x1b[31mCharles", "(Tibet)",
             "The Pope \u200b", "🦩 " * 30, "cat " * 74, "a dog", "a fox", "Mr. X!"]
SOURCES = ["a man", "Charles [/]", "King \x1b]0;t\x07", "a cat", "\u200b"]
TARGETS = ["a woman", "William", "a dog \x1b[0m", "[bold]Queen", " "]


def request_object() -> st.SearchStrategy[Any]:
    def texts(pool: list[str]) -> st.SearchStrategy[str]:
        plausible = st.sampled_from(pool)
        return st.one_of(plausible, plausible, plausible, hostile_text(20),
                         st.tuples(plausible, hostile_text(4)).map("".join))

    text = texts(PLAUSIBLE)
    source, target = texts(SOURCES), texts(TARGETS)
    probe = st.fixed_dictionaries({"prompt": text, "source": source, "target": target})
    fields = st.fixed_dictionaries(
        {"prompt": text, "source": source, "target": target},
        optional={"subject": text, "contrastive": st.lists(text, max_size=2), "positives": st.lists(probe, max_size=2),
                  "oracle": text, "extra": st.dictionaries(hostile_text(5), text, max_size=2)},
    )
    return st.one_of(fields, fields, fields, json_values(3))


def _timed_csv(rows: list[list[str]]) -> bytes:
    from engine.importers.timed import REQUIRED

    def cell(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text

    lines = [",".join(REQUIRED)] + [",".join(cell(c) for c in r) for r in rows]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def request_file_cases() -> st.SearchStrategy[tuple[bytes, str, bool]]:
    """(file bytes, suffix, skip_invalid): JSON Lines / JSON / TIMED CSV of hostile requests, the
    same cut off mid-file, with a lone surrogate (invalid UTF-8), garbage, or under a wrong suffix."""
    from engine.importers.timed import REQUIRED

    rows = st.lists(request_object(), min_size=1, max_size=4)
    jsonl = rows.map(lambda rs: "\n".join(json.dumps(r, ensure_ascii=False) for r in rs).encode("utf-8"))
    json_list = rows.map(lambda rs: json.dumps(rs, ensure_ascii=False).encode("utf-8"))
    cell = st.one_of(st.sampled_from(PLAUSIBLE + SOURCES + TARGETS), hostile_text(8))
    csv_rows = st.lists(st.lists(cell, min_size=len(REQUIRED) - 2, max_size=len(REQUIRED)), min_size=1, max_size=3)
    csv_bytes = csv_rows.map(_timed_csv)

    def cut(b: bytes) -> st.SearchStrategy[bytes]:
        return st.integers(min_value=1, max_value=max(1, len(b))).map(lambda n: b[:n])

    def surrogate(b: bytes) -> st.SearchStrategy[bytes]:
        return st.integers(min_value=0, max_value=len(b)).map(lambda n: b[:n] + "\ud800".encode("utf-8", "surrogatepass") + b[n:])

    matched = st.one_of(
        st.tuples(jsonl, st.just(".jsonl")), st.tuples(json_list, st.just(".json")), st.tuples(csv_bytes, st.just(".csv")))
    damaged = st.one_of(
        matched.flatmap(lambda c: st.tuples(cut(c[0]), st.just(c[1]))),
        matched.flatmap(lambda c: st.tuples(surrogate(c[0]), st.just(c[1]))),
        st.tuples(st.one_of(jsonl, csv_bytes, st.binary(max_size=200)), st.sampled_from([".jsonl", ".json", ".csv", ".txt"])),
    )
    return st.tuples(st.one_of(matched, matched, matched, damaged), st.booleans()).map(lambda t: (*t[0], t[1]))


def run_request_file_case(ws: Any, folder: Path, tokenizer: Any, content: bytes, suffix: str,
                          skip_invalid: bool) -> str:
    """Import a generated file: a report or one user error, and jobs queued only as the report says."""
    from refact_tui.services.queue import import_requests
    from store import jobs as job_store

    path = folder / f"fuzz{suffix}"
    path.write_bytes(content)
    before = len(job_store.list_jobs(ws.db, None))
    try:
        report = import_requests(ws, path, skip_invalid=skip_invalid, tokenizer=tokenizer, allow_duplicates=True)
    except Exception as exc:  # noqa: BLE001 - classified just below
        if not is_user_error(exc):
            raise FuzzFailure(f"import of {content[:60]!r}: {type(exc).__name__}: {exc}") from exc
        if len(job_store.list_jobs(ws.db, None)) != before:
            raise FuzzFailure("a refused import queued jobs")
        return "refused"
    added = len(job_store.list_jobs(ws.db, None)) - before
    if added != len(report.added) or (report.errors and not skip_invalid and added):
        raise FuzzFailure(f"import queued {added} job(s) but reported {len(report.added)} ({len(report.errors)} errors)")
    return "accepted" if report.added else "refused"


# ---- manifests -------------------------------------------------------------------------------

def valid_manifest() -> dict[str, Any]:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    return {
        "format": "refact-deltas/2", "created_at": 1.0, "history": "main",
        "base": {"source": "m", "kind": "sd-pipeline", "encoder_family": "clip", "encoder_hash": a},
        "final_weights_hash": c,
        "edits": [
            {"seq": 1, "file": "deltas/0001.safetensors", "sha256": "1" * 64, "layer": 2, "module": "m",
             "request": {"prompt": "p"}, "hparams": {}, "before_hash": a, "weights_hash": b, "p_target": 0.9},
            {"seq": 2, "file": "deltas/0002.safetensors", "sha256": "2" * 64, "layer": 2, "module": "m",
             "request": {"prompt": "q"}, "hparams": {}, "before_hash": b, "weights_hash": c, "p_target": 0.8},
        ],
    }


PATHS = [("format",), ("base",), ("base", "encoder_hash"), ("final_weights_hash",), ("edits",),
         ("edits", 0), ("edits", 1, "file"), ("edits", 0, "sha256"), ("edits", 0, "layer"), ("edits", 1, "seq"),
         ("edits", 0, "before_hash"), ("edits", 1, "weights_hash"), ("edits", 0, "request"), ("edits", 0, "p_target"),
         ("edits", 0, "weights_hashes"), ("base", "weights_hashes")]
BAD_FILES = ["/etc/passwd", "../x", "a/../../b", "C:\\x", "\\\\server\\x", "", ".", "deltas/0001.safetensors"]


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return node[key]
    return None


def manifest_cases() -> st.SearchStrategy[str]:
    """JSON text of a valid manifest with a few fields replaced, removed or deeply nested."""
    mutation = st.tuples(st.sampled_from(PATHS),
                         st.one_of(json_values(4), st.sampled_from(BAD_FILES), st.just("__delete__")))
    nested = st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n)

    def build(mutations: list, deep: str | None, raw: bytes | None) -> str:
        if raw is not None:
            return raw.decode("utf-8", "replace")
        data = valid_manifest()
        for path, value in mutations:
            node: Any = data
            for key in path[:-1]:
                node = _child(node, key)
            key = path[-1]
            if isinstance(node, dict):
                if value == "__delete__":
                    node.pop(key, None)
                else:
                    node[key] = value
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node[key] = None if value == "__delete__" else value
        text = json.dumps(data, ensure_ascii=False)
        return text if deep is None else text[:-1] + ', "deep": ' + deep + "}"

    return st.builds(build, st.lists(mutation, max_size=3), st.none() | nested, st.none() | st.binary(max_size=80))


def run_manifest_case(folder: Path, text: str) -> str:
    """Parse and schema-check a generated manifest: valid, or ManifestError (one line)."""
    from refact_tui.services.manifest import ManifestError, parse_manifest

    try:
        parse_manifest(text, folder / "manifest.json")
    except ManifestError as exc:
        if "\n" in str(exc):
            raise FuzzFailure(f"manifest error is not one line: {exc!r}") from exc
        return "refused"
    except Exception as exc:  # noqa: BLE001
        raise FuzzFailure(f"manifest {text[:80]!r}: {type(exc).__name__}: {exc}") from exc
    return "accepted"
