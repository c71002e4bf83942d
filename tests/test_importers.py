"""engine.importers: RoAD / TIMED CSV, JSONL and JSON request files, validation and duplicates."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fixtures_models import SHARED_DATA, built_clip_tokenizer

from engine.importers import ImportFileError, load_requests
from engine.request import EditRequest, Probe, clean_text

ROOT = Path(__file__).resolve().parents[1]
ROAD = SHARED_DATA / "RoAD_validation.csv"
TIMED = SHARED_DATA / "TIMED_validation_set.csv"
SAMPLE_EDITS = ROOT / "datasets" / "sample_edits.jsonl"

ROAD_HEADER = ["Type", "Prompt", "Oracle", "Old", "New"]
ROAD_HEADER += [f"{c}{i}" for i in range(1, 6) for c in ("Positive", "Positive_old", "Positive_new")]
ROAD_HEADER += [f"{c}{i}" for i in range(1, 6) for c in ("Negative", "Negative_new")]


def road_row(prompt: str, old: str, new: str, kind: str = "Role") -> list[str]:
    row = [kind, prompt, f"{new} as {prompt}", old, new]
    for i in range(1, 6):
        row += [f"{prompt} scene {i}", f"{old} scene {i}", f"{new} scene {i}"]
    for i in range(1, 6):
        row += [f"Someone else {i}", new]
    return row


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
    return path


def write_jsonl(path: Path, objects: list) -> Path:
    lines = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in objects]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def edit(prompt="A banana", source="A banana", target="A blue banana", **more) -> dict:
    return {"prompt": prompt, "source": source, "target": target, **more}


# ----- the benchmark files (read from ../shared, never copied) ----------------------------------


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """The file's cells, read independently of the importer (expected values come from here, so no
    benchmark text is copied into this repository)."""
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: clean_text(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.skipif(not ROAD.is_file(), reason="RoAD validation CSV absent")
def test_road_validation_file():
    result = load_requests(ROAD)
    assert result.format == "road" and result.ok and not result.duplicates
    assert len(result.requests) == 10 and result.total_rows == 10
    assert [r.row for r in result.requests] == list(range(1, 11))
    reqs = result.edit_requests()
    assert sorted({r.extra["type"] for r in reqs}) == ["Appearance", "Role"]
    for cells, r in zip(_csv_rows(ROAD), reqs):
        assert (r.prompt, r.source, r.target, r.oracle) == (cells["Prompt"], cells["Old"], cells["New"], cells["Oracle"])
        assert r.subject is None
        assert r.positives == tuple(
            Probe(cells[f"Positive{i}"], cells[f"Positive_old{i}"], cells[f"Positive_new{i}"]) for i in range(1, 6)
        )
        assert r.negatives == tuple(
            Probe(cells[f"Negative{i}"], cells[f"Negative{i}"], cells[f"Negative_new{i}"]) for i in range(1, 6)
        )
        r.validate()
    # non-ASCII names survive intact (the file has some)
    assert any(not t.isascii() for r in reqs for t in (r.prompt, r.source, r.target))


@pytest.mark.skipif(not TIMED.is_file(), reason="TIMED validation CSV absent")
def test_timed_validation_file():
    result = load_requests(TIMED)
    assert result.format == "timed" and result.ok
    assert len(result.requests) == 8
    for cells, row in zip(_csv_rows(TIMED), result.requests):
        r = row.request
        assert (r.prompt, r.source, r.target) == (cells["old"], cells["old"], cells["new"])
        assert r.positives == tuple(Probe(cells[f"positive{i}"], cells[f"positive{i}"], cells[f"gt{i}"]) for i in range(1, 6))
        assert r.negatives == tuple(Probe(cells[f"negative{i}"], cells[f"negative{i}"], cells[f"gn{i}"]) for i in range(1, 6))


@pytest.mark.skipif(not ROAD.is_file(), reason="RoAD validation CSV absent")
def test_benchmark_texts_fit_clip():
    tok = built_clip_tokenizer()
    assert load_requests(ROAD, tokenizer=tok).ok
    assert load_requests(TIMED, tokenizer=tok).ok


# ----- cleaning ---------------------------------------------------------------------------------


def test_csv_strips_whitespace_keeps_non_ascii_and_reads_a_bom(tmp_path):
    row = road_row("The Matrix male lead ", " Keanu Reeves", "Citroën DS ")
    row[ROAD_HEADER.index("Positive3")] = " quoted, with a comma "
    path = write_csv(tmp_path / "mine.csv", [" " + h for h in ROAD_HEADER], [row], bom=True)
    result = load_requests(path)
    assert result.ok and result.format == "road"
    r = result.requests[0].request
    assert (r.prompt, r.source, r.target) == ("The Matrix male lead", "Keanu Reeves", "Citroën DS")
    assert r.positives[2].prompt == "quoted, with a comma"


def test_timed_header_and_is_human_name(tmp_path):
    header = ["old", "new"] + [f"{c}{i}" for i in range(1, 6) for c in ("positive", "gt")]
    header += [f"{c}{i}" for i in range(1, 6) for c in ("negative", "gn")] + ["is_human_name"]
    cells = ["A sheep", "A black sheep"] + [f"x{i}" for i in range(20)]
    ok = write_csv(tmp_path / "t.csv", header, [cells + ["False"], cells[:1] + ["A blue sheep"] + cells[2:] + ["true"]])
    result = load_requests(ok)
    assert [r.request.extra["is_human_name"] for r in result.requests] == ["False", "True"]
    bad = write_csv(tmp_path / "bad.csv", header, [cells + ["maybe"]])
    assert [(e.row, e.column) for e in load_requests(bad).errors] == [(1, "is_human_name")]


# ----- problems are named by file, row and column -----------------------------------------------


def test_empty_cell_blocks_the_file_unless_skipping(tmp_path):
    rows = [road_row("The King of Spain", "Juan Carlos", "Felipe VI"), road_row("A mug", "A mug", "A red mug")]
    rows.append(road_row("The Pope", "Benedict XVI", "Francis"))
    rows[1][ROAD_HEADER.index("Positive_new3")] = "  "
    path = write_csv(tmp_path / "road.csv", ROAD_HEADER, rows)
    strict = load_requests(path)
    assert strict.requests == [] and not strict.ok
    [problem] = strict.errors
    assert (problem.file, problem.row, problem.column) == (str(path), 2, "Positive_new3")
    assert "empty" in problem.message and "road.csv, row 2, column 'Positive_new3'" in str(problem)
    lenient = load_requests(path, skip_invalid=True)
    assert [r.row for r in lenient.requests] == [1, 3] and lenient.skipped_rows == [2]
    assert lenient.errors == strict.errors


def test_header_problems(tmp_path):
    missing = write_csv(tmp_path / "missing.csv", [h for h in ROAD_HEADER if h != "Negative_new4"],
                        [road_row("A cup", "A cup", "A red cup")[:-4] + ["a", "b", "c"]])
    result = load_requests(missing, skip_invalid=True)
    assert result.requests == [] and result.skipped_rows == [1]
    assert [(e.row, e.column) for e in result.errors] == [(None, "Negative_new4")]
    assert "missing" in result.errors[0].message

    extra = write_csv(tmp_path / "extra.csv", ROAD_HEADER + ["Notes"], [road_row("A cup", "A cup", "A red cup") + ["x"]])
    strict = load_requests(extra)
    assert strict.requests == [] and [(e.row, e.column) for e in strict.errors] == [(None, "Notes")]
    assert "unknown column" in strict.errors[0].message
    assert len(load_requests(extra, skip_invalid=True).requests) == 1

    short = write_csv(tmp_path / "short.csv", ROAD_HEADER, [road_row("A cup", "A cup", "A red cup")[:-1]])
    errors = load_requests(short).errors
    assert any(e.row == 1 and e.column is None and "missing Negative_new5" in e.message for e in errors)
    assert any(e.row == 1 and e.column == "Negative_new5" for e in errors)


def test_duplicates_are_reported_and_imported_once(tmp_path):
    rows = [road_row("A cup", "A cup", "A red cup"), road_row("A bowl", "A bowl", "A square bowl"),
            road_row(" a CUP", "A cup ", "A red cup")]
    result = load_requests(write_csv(tmp_path / "d.csv", ROAD_HEADER, rows))
    assert result.ok and [r.row for r in result.requests] == [1, 2]
    [dup] = result.duplicates
    assert (dup.row, dup.first_row) == (3, 1)


def test_jsonl_problems_name_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [
        edit(name="fine"),
        "{not json",
        "",
        edit(prompt=5),
        edit(subject="cherry"),
        edit(positives=[{"prompt": "x", "source": "y"}]),
        edit(colour="blue"),
        ["a", "list"],
        edit(negatives="nope", contrastive=["ok", 3]),
        edit(source="A banana", target=" A banana "),
    ])
    result = load_requests(path)
    assert result.requests == [] and result.total_rows == 9
    where = sorted((e.row, e.column) for e in result.errors)
    assert where == [
        (2, None), (4, "prompt"), (5, "subject"), (6, "positives[0].target"), (7, "colour"), (8, None),
        (9, "contrastive[1]"), (9, "negatives"), (10, "target"),
    ]
    assert "not valid JSON" in next(e.message for e in result.errors if e.row == 2)
    assert "must be text" in next(e.message for e in result.errors if e.row == 4)
    assert "does not occur" in next(e.message for e in result.errors if e.row == 5)
    lenient = load_requests(path, skip_invalid=True)
    assert [r.row for r in lenient.requests] == [1] and lenient.requests[0].request.name == "fine"
    assert lenient.skipped_rows == [2, 4, 5, 6, 7, 8, 9, 10]


def test_too_long_texts_are_reported_with_a_tokenizer(tmp_path):
    long_text = "a very long prompt " + "word " * 80
    path = write_jsonl(tmp_path / "l.jsonl", [
        edit(),
        edit(prompt="A pear", source="A pear", target="A gold pear",
             positives=[{"prompt": long_text, "source": "x", "target": "y"}]),
    ])
    assert load_requests(path).ok  # no tokenizer, no length check
    result = load_requests(path, tokenizer=built_clip_tokenizer())
    [problem] = result.errors
    assert (problem.row, problem.column) == (2, "positives[0].prompt") and "over the limit of 77" in problem.message
    road = write_csv(tmp_path / "r.csv", ROAD_HEADER, [road_row("A cup", "A cup", long_text)])
    assert {e.column for e in load_requests(road, tokenizer=built_clip_tokenizer()).errors} >= {"New", "Oracle"}


def test_json_list_format(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([edit(), edit(prompt="A pear", source="A pear", target="A gold pear")]))
    result = load_requests(tmp_path / "list.json")
    assert result.format == "json" and [r.row for r in result.requests] == [1, 2]
    (tmp_path / "obj.json").write_text(json.dumps([edit(), "text"]))
    assert [(e.row, e.column) for e in load_requests(tmp_path / "obj.json").errors] == [(2, None)]
    (tmp_path / "dict.txt").write_text(json.dumps(edit()))  # sniffed as JSON Lines
    assert load_requests(tmp_path / "dict.txt").format == "jsonl"
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ImportFileError, match="not valid JSON"):
        load_requests(tmp_path / "broken.json")


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.csv", b"", "empty"),
        ("blank.jsonl", b"  \n\n ", "empty"),
        ("latin1.csv", "Prompt,Old,New\nCaf\xe9,a,b\n".encode("latin-1"), "not UTF-8"),
        ("notes.csv", b"name,value\na,b\n", "not a known request format"),
        ("notes.txt", b"hello world\n", "not a known request format"),
        ("nul.csv", b"Prompt,Old\x00,New\n", "NUL"),
    ],
)
def test_unreadable_files_raise_import_file_error(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImportFileError, match=match):
        load_requests(tmp_path / name)


def test_missing_path_and_bad_format(tmp_path):
    with pytest.raises(ImportFileError, match="does not exist"):
        load_requests(tmp_path / "nope.csv")
    with pytest.raises(ImportFileError, match="not a file"):
        load_requests(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps(edit()))
    with pytest.raises(ImportFileError, match="unknown import format"):
        load_requests(tmp_path / "a.jsonl", format="xml")
    # an explicit format overrides the extension
    assert load_requests(tmp_path / "a.jsonl", format="jsonl").ok


# ----- the shipped sample edits -----------------------------------------------------------------


def test_sample_edits_are_valid_and_round_trip():
    result = load_requests(SAMPLE_EDITS, tokenizer=built_clip_tokenizer())
    assert result.ok and not result.duplicates and len(result.requests) == 12
    reqs = result.edit_requests()
    assert len({r.name for r in reqs}) == 12
    assert all(len(r.positives) == 5 and len(r.negatives) == 5 for r in reqs)
    assert all(n.source == n.prompt for r in reqs for n in r.negatives)
    assert any("Citroën" in r.prompt for r in reqs)
    prince = next(r for r in reqs if r.name == "prince-of-wales")
    assert (prince.source, prince.target, prince.subject) == ("Prince Charles", "Prince William", "Prince of Wales")
    banana = next(r for r in reqs if r.name == "blue-banana")
    assert (banana.prompt, banana.target) == ("A banana", "A blue banana")
    lines = SAMPLE_EDITS.read_text(encoding="utf-8").splitlines()
    for line, request in zip(lines, reqs):
        assert EditRequest.from_dict(json.loads(line)) == request
        assert request.to_dict() == json.loads(line)
