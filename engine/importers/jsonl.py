"""Our own request formats: JSON Lines (one object per line) and JSON (a list of objects).

Each object has the fields of ``EditRequest.to_dict()``: prompt, source, target, and optionally
subject, contrastive (list of texts), positives / negatives (lists of {prompt, source, target}),
oracle, name and extra (an object of texts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from engine.importers.base import (
    ImportFileError,
    ImportProblem,
    ImportResult,
    RowChecker,
    RowOutcome,
    collect,
    finish_request,
)
from engine.request import EditRequest, Probe

TEXT_FIELDS = ("prompt", "source", "target")
OPTIONAL_TEXT_FIELDS = ("subject", "oracle", "name")
LIST_FIELDS = ("contrastive", "positives", "negatives", "extra")
KNOWN_FIELDS = set(TEXT_FIELDS + OPTIONAL_TEXT_FIELDS + LIST_FIELDS)
PROBE_FIELDS = ("prompt", "source", "target")


def parse_jsonl(
    text: str, path: Path, tokenizer: Any | None, max_tokens: int, skip_invalid: bool
) -> ImportResult:
    """Read JSON Lines text: blank lines are ignored, every other line is one request object."""
    file = str(path)

    def outcomes() -> Iterator[RowOutcome]:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            check = RowChecker(file, number)
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                check.add(None, f"is not valid JSON ({_short(exc)}); fix the line")
                yield RowOutcome(number, None, check.problems)
                continue
            yield parse_object(obj, check, tokenizer, max_tokens)

    return collect(path, "jsonl", outcomes(), [], skip_invalid)


def parse_json(
    text: str, path: Path, tokenizer: Any | None, max_tokens: int, skip_invalid: bool
) -> ImportResult:
    """Read a JSON document holding a list of request objects (rows are 1-based list positions)."""
    file = str(path)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ImportFileError(f"{file} is not valid JSON ({_short(exc)}); fix it or save it as JSON Lines") from None
    if not isinstance(data, list):
        problem = ImportProblem(file, None, None, "must hold a JSON list of request objects")
        return collect(path, "json", [], [problem], skip_invalid)
    outcomes = (
        parse_object(obj, RowChecker(file, i), tokenizer, max_tokens) for i, obj in enumerate(data, start=1)
    )
    return collect(path, "json", outcomes, [], skip_invalid)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_object(obj: Any, check: RowChecker, tokenizer: Any | None, max_tokens: int) -> RowOutcome:
    """Validate one request object field by field and build its EditRequest."""
    if not isinstance(obj, dict):
        check.add(None, f"must be a JSON object, got {_json_type(obj)}")
        return RowOutcome(check.row, None, check.problems)
    for key in obj:
        if key not in KNOWN_FIELDS:
            check.add(str(key), "unknown field; remove it or fix its name")
    values = {name: check.text(obj.get(name), name) for name in TEXT_FIELDS}
    for name in OPTIONAL_TEXT_FIELDS:
        if name in obj:
            # a present subject must not be empty; oracle and name may be
            values[name] = check.text(obj[name], name, required=name == "subject")
    contrastive = _texts(obj.get("contrastive", []), "contrastive", check)
    positives = _probes(obj.get("positives", []), "positives", check)
    negatives = _probes(obj.get("negatives", []), "negatives", check)
    extra = _extra(obj.get("extra", {}), check)
    if check.problems:
        return RowOutcome(check.row, None, check.problems)
    request = EditRequest(
        prompt=values["prompt"],
        source=values["source"],
        target=values["target"],
        subject=values.get("subject"),
        contrastive=tuple(contrastive),
        positives=tuple(positives),
        negatives=tuple(negatives),
        oracle=values.get("oracle"),
        name=values.get("name"),
        extra=extra,
    )
    return finish_request(check, request, tokenizer, max_tokens)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _texts(value: Any, field: str, check: RowChecker) -> list[str]:
    if not isinstance(value, list):
        check.add(field, f"must be a list of texts, got {_json_type(value)}")
        return []
    return [t for i, item in enumerate(value) if (t := check.text(item, f"{field}[{i}]")) is not None]


def _probes(value: Any, field: str, check: RowChecker) -> list[Probe]:
    if not isinstance(value, list):
        check.add(field, f"must be a list of {{prompt, source, target}} objects, got {_json_type(value)}")
        return []
    probes = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            check.add(where, f"must be a {{prompt, source, target}} object, got {_json_type(item)}")
            continue
        for key in item:
            if key not in PROBE_FIELDS:
                check.add(f"{where}.{key}", "unknown field; a probe has prompt, source and target")
        texts = [check.text(item.get(name), f"{where}.{name}") for name in PROBE_FIELDS]
        if all(t is not None for t in texts):
            probes.append(Probe(*texts))
    return probes


def _extra(value: Any, check: RowChecker) -> dict[str, str]:
    if not isinstance(value, dict):
        check.add("extra", f"must be an object of texts, got {_json_type(value)}")
        return {}
    out = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            check.add(f"extra.{key}", f"must be text or a number, got {_json_type(item)}")
        else:
            text = check.text(str(item), f"extra.{key}", required=False)
            if text is not None:
                out[key] = text
    return out
