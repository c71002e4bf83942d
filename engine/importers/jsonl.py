"""Our own request formats: JSON Lines (one object per line) and JSON (a list of objects).

Each object has the fields of ``EditRequest.to_dict()``: prompt, source, target, and optionally
subject, contrastive (list of texts), positives / negatives (lists of {prompt, source, target}),
oracle, name, extra (an object of texts) and hparams (an object of hyperparameter overrides,
checked like the CLI options).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

from engine.admission import RequestChecker
from engine.importers.base import (
    ImportFileError,
    ImportProblem,
    ImportResult,
    RowChecker,
    RowOutcome,
    collect,
    finish_request,
)
from engine.methods.refact.hparams import HParamsError, ReFACTHParams
from engine.request import EditRequest, Probe

TEXT_FIELDS = ("prompt", "source", "target")
OPTIONAL_TEXT_FIELDS = ("subject", "oracle", "name")
LIST_FIELDS = ("contrastive", "positives", "negatives", "extra")
KNOWN_FIELDS = set(TEXT_FIELDS + OPTIONAL_TEXT_FIELDS + LIST_FIELDS) | {"hparams"}
PROBE_FIELDS = ("prompt", "source", "target")


def parse_jsonl(
    text: str, path: Path, checker: RequestChecker | None, skip_invalid: bool
) -> ImportResult:
    """Read JSON Lines text: blank lines are ignored, every other line is one request object."""
    file = str(path)

    def outcomes() -> Iterator[RowOutcome]:
        # "\n" only: str.splitlines() would also split inside a line at U+2028, U+0085, \x1c ...
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            check = RowChecker(file, number)
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                check.add(None, f"is not valid JSON ({_short(exc)}); fix the line")
                yield RowOutcome(number, None, check.problems)
                continue
            yield parse_object(obj, check, checker)

    return collect(path, "jsonl", outcomes(), [], skip_invalid)


def parse_json(
    text: str, path: Path, checker: RequestChecker | None, skip_invalid: bool
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
        parse_object(obj, RowChecker(file, i), checker) for i, obj in enumerate(data, start=1)
    )
    return collect(path, "json", outcomes, [], skip_invalid)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_object(obj: Any, check: RowChecker, checker: RequestChecker | None) -> RowOutcome:
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
    hparams = _hparams(obj.get("hparams", {}), check)
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
    return finish_request(check, request, checker, hparams=hparams)


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


def _hparams(value: Any, check: RowChecker) -> dict[str, Any]:
    """A row's hyperparameter overrides, range-checked now (the layer against the model when queued)."""
    if not isinstance(value, dict):
        check.add("hparams", f"must be an object of hyperparameters, got {_json_type(value)}")
        return {}
    try:
        ReFACTHParams().with_overrides(**value) if value else None
    except HParamsError as exc:
        check.add("hparams", str(exc))
        return {}
    except TypeError:
        known = ", ".join(f.name for f in fields(ReFACTHParams))
        check.add("hparams", f"has unknown names {sorted(map(str, value))}; known: {known}")
        return {}
    return {k: (list(v) if k == "templates" else v) for k, v in value.items() if v is not None}


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
