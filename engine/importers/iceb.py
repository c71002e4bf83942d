"""ICEB CSV (EMCID's ImageNet Concept Editing Benchmark, MIT licence) and its class prompts.

Edit rows: ``source,dest,prompts,seed_train,seeds,source id,dest id``. ``prompts`` and ``seeds`` are
Python list literals (read with ``ast.literal_eval``, never evaluated); every template holds one
``{}``. The first template filled with ``source`` is the edit prompt (subject: ``source``), filled
with ``source`` / ``dest`` it gives the texts compared for efficacy; every further template gives a
generality probe the same way. The ids are ImageNet class indices.

Specificity comes from the class prompts (``modify_imgnet_prompts.csv``: ``text prompt,class
name,random seed``, five prompts per ImageNet class in class order). Each row gets prompts of
``N_NEGATIVES`` classes that no row of the file edits (by name or id), drawn by a generator seeded
from the row's source and dest, so a row's probes never depend on the rows around it; the probe's
target is the prompt with the class name replaced by ``dest``.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from engine.admission import RequestChecker
from engine.importers.base import (
    CsvFormat,
    CsvTable,
    ImportFileError,
    ImportResult,
    RowChecker,
    parse_csv_requests,
    read_csv,
)
from engine.request import EditRequest, Probe

REQUIRED = ["source", "dest", "prompts", "seed_train", "seeds", "source id", "dest id"]
FIELD_COLUMNS = {"prompt": "prompts", "source": "source", "target": "dest", "subject": "source"}
CLASS_COLUMNS = ("text prompt", "class name", "random seed")
PROMPTS_PER_CLASS = 5
N_NEGATIVES = 5


def is_iceb_header(header: Sequence[str]) -> bool:
    """True if a CSV header looks like ICEB (has source, dest and prompts)."""
    return {"source", "dest", "prompts"} <= {h.strip().lower() for h in header}


@dataclass(frozen=True)
class ClassPrompt:
    """One prompt of an ImageNet class (``index``: the class's ImageNet index)."""

    index: int
    name: str
    prompt: str


def read_class_prompts(path: Path, text: str) -> list[ClassPrompt]:
    """The class prompts of ``modify_imgnet_prompts.csv``; ImportFileError for a file of another format.

    Consecutive rows of one class name form a class of at most PROMPTS_PER_CLASS prompts (ImageNet
    has two adjacent classes named 'maillot'), which numbers the classes as ImageNet does."""
    table = read_csv(text, str(path))
    if tuple(h.lower() for h in table.header) != CLASS_COLUMNS:
        raise ImportFileError(
            f"{path} is not an ICEB class-prompt file (expected the columns {', '.join(CLASS_COLUMNS)}, "
            f"got {', '.join(table.header) or 'none'}); pass modify_imgnet_prompts.csv to --negatives")
    out: list[ClassPrompt] = []
    index, count, last = -1, 0, None
    for n, cells in enumerate(table.rows, 1):
        if len(cells) != len(CLASS_COLUMNS) or not cells[0].strip() or not cells[1].strip():
            raise ImportFileError(f"{path}, row {n}: a class prompt needs a text prompt and a class name; fix the row")
        name = cells[1].strip()
        if name != last or count == PROMPTS_PER_CLASS:
            index, count, last = index + 1, 0, name
        count += 1
        out.append(ClassPrompt(index, name, cells[0].strip()))
    return out


def parse_iceb(table: CsvTable, path: Path, checker: RequestChecker | None, skip_invalid: bool,
               negatives: Sequence[ClassPrompt] = ()) -> ImportResult:
    """Read a parsed ICEB table into an ImportResult; ``negatives`` are the class prompts that the
    specificity probes are drawn from (none: the requests have no negatives)."""
    pool = _unedited(table, negatives)
    fmt = CsvFormat("iceb", REQUIRED, [], FIELD_COLUMNS, partial(_request, pool=pool))
    return parse_csv_requests(fmt, table, path, checker, skip_invalid)


def _unedited(table: CsvTable, negatives: Sequence[ClassPrompt]) -> list[list[ClassPrompt]]:
    """Per class (ImageNet order) its prompts that name it, for the classes no row of the file
    edits: neither its name nor its index is any row's source or dest."""
    col = {h.strip().lower(): i for i, h in enumerate(table.header)}
    names, ids = set(), set()
    for cells in table.rows:
        for key in ("source", "dest"):
            if col.get(key) is not None and col[key] < len(cells):
                names.add(cells[col[key]].strip().lower())
            i = col.get(f"{key} id")
            if i is not None and i < len(cells) and cells[i].strip().lstrip("-").isdigit():
                ids.add(int(cells[i]))
    classes: dict[int, list[ClassPrompt]] = {}
    for c in negatives:
        if c.index not in ids and c.name.lower() not in names and c.name.lower() in c.prompt.lower():
            classes.setdefault(c.index, []).append(c)
    return [classes[i] for i in sorted(classes)]


def _literal_list(check: RowChecker, value: str, column: str) -> list | None:
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        parsed = None
    if not isinstance(parsed, list):
        check.add(column, f"is not a Python list string ({value.strip()[:40]!r}); write it like ['A photo of {{}}']")
        return None
    return parsed


def _integer(check: RowChecker, value: str, column: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        check.add(column, f"must be an integer, got {value.strip()[:20]!r}")
        return None


def _fill(template: str, name: str) -> str:
    return template.replace("{}", name)


def _replace_name(prompt: str, name: str, new: str) -> str:
    return re.sub(re.escape(name), lambda _: new, prompt, flags=re.IGNORECASE)


def _negatives(pool: list[list[ClassPrompt]], source: str, dest: str) -> tuple[Probe, ...]:
    """N_NEGATIVES prompts of distinct unedited classes, drawn from a generator seeded by the row."""
    seed = int.from_bytes(hashlib.sha256(f"{source}\n{dest}".lower().encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(N_NEGATIVES, len(pool)))
    probes = []
    for prompts in chosen:
        c = rng.choice(prompts)
        probes.append(Probe(c.prompt, c.prompt, _replace_name(c.prompt, c.name, dest)))
    return tuple(probes)


def _request(check: RowChecker, cells: dict[str, str], text: dict[str, Any],
             pool: list[list[ClassPrompt]]) -> EditRequest | None:
    templates = _literal_list(check, cells["prompts"], "prompts")
    if templates is not None:
        if not templates:
            check.add("prompts", "is an empty list; give at least one template with {}")
        elif not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
            check.add("prompts", "every template must be a string with exactly one {}")
    _literal_list(check, cells["seeds"], "seeds")
    ids = {k: _integer(check, cells[k], k) for k in ("seed_train", "source id", "dest id")}
    if check.problems or templates is None:
        return None
    source, dest = text["source"], text["dest"]
    first, *rest = templates
    return EditRequest(
        prompt=_fill(first, source),
        source=_fill(first, source),
        target=_fill(first, dest),
        subject=source,
        positives=tuple(Probe(_fill(t, source), _fill(t, source), _fill(t, dest)) for t in rest),
        negatives=_negatives(pool, source, dest) if pool else (),
        extra={"source_id": str(ids["source id"]), "dest_id": str(ids["dest id"]),
               "seed_train": str(ids["seed_train"])},
    )
