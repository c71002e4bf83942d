"""Fuzzing the request importers: any file content gives a result or ImportFileError, nothing else."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from fixtures_models import built_clip_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.importers import ImportFileError, ImportResult, load_requests
from engine.importers.road import OPTIONAL as ROAD_OPTIONAL
from engine.importers.road import REQUIRED as ROAD_REQUIRED
from engine.importers.timed import OPTIONAL as TIMED_OPTIONAL
from engine.importers.timed import REQUIRED as TIMED_REQUIRED

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXTENSIONS = st.sampled_from([".csv", ".jsonl", ".json", ".txt", ""])
FIELDS = ["prompt", "source", "target", "subject", "contrastive", "positives", "negatives", "oracle", "name",
          "extra", "bogus"]

cell_text = st.one_of(
    st.sampled_from(["", " ", "A cat", "a CAT ", "A blue cat", "Citroën", '"quoted, comma"', "line\nbreak",
                     "word " * 90, "\ud800"]),
    st.text(max_size=30),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | cell_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5),
                                                                      children, max_size=5),
    max_leaves=20,
)
request_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


def run_loader(content: bytes, suffix: str, skip_invalid: bool, with_tokenizer: bool) -> None:
    tokenizer = built_clip_tokenizer() if with_tokenizer else None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"requests{suffix}"
        path.write_bytes(content)
        try:
            result = load_requests(path, skip_invalid=skip_invalid, tokenizer=tokenizer)
        except ImportFileError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
    assert isinstance(result, ImportResult)
    if result.errors and not skip_invalid:
        assert result.requests == []
    rows = [r.row for r in result.requests]
    assert rows == sorted(set(rows)) and all(r >= 1 for r in rows)
    assert not set(rows) & set(result.skipped_rows)
    for imported in result.requests:
        imported.request.validate()
    assert len({r.request.key() for r in result.requests}) == len(result.requests)


@SETTINGS
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode), suffix=EXTENSIONS,
       skip_invalid=st.booleans())
def test_random_bytes(content, suffix, skip_invalid):
    run_loader(content, suffix, skip_invalid, with_tokenizer=False)


@SETTINGS
@given(lines=st.lists(request_objects.map(json.dumps) | st.text(max_size=20) | json_values.map(json.dumps),
                      max_size=6),
       as_list=st.booleans(), skip_invalid=st.booleans(), with_tokenizer=st.booleans())
def test_random_json_requests(lines, as_list, skip_invalid, with_tokenizer):
    if as_list:
        content = "[" + ",".join(lines) + "]"
        suffix = ".json"
    else:
        content = "\n".join(lines)
        suffix = ".jsonl"
    run_loader(content.encode("utf-8", "surrogatepass"), suffix, skip_invalid, with_tokenizer)


@SETTINGS
@given(data=st.data(), road=st.booleans(), skip_invalid=st.booleans(), with_tokenizer=st.booleans(),
       bom=st.booleans())
def test_random_csv_requests(data, road, skip_invalid, with_tokenizer, bom):
    columns = (ROAD_REQUIRED + ROAD_OPTIONAL) if road else (TIMED_REQUIRED + TIMED_OPTIONAL)
    header = data.draw(st.lists(st.sampled_from(columns + ["Extra", ""]), min_size=1, max_size=len(columns) + 2))
    if data.draw(st.booleans()):
        header = (ROAD_REQUIRED if road else TIMED_REQUIRED) + header[:2]
    rows = data.draw(st.lists(st.lists(cell_text, min_size=0, max_size=len(header) + 2), max_size=4))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    content = ("\ufeff" if bom else "") + buf.getvalue()
    run_loader(content.encode("utf-8", "surrogatepass"), ".csv", skip_invalid, with_tokenizer)
