"""ICEB (EMCID's benchmark) request files and class prompts: detection, probes, deterministic
negatives, one-line errors through `queue import` and `bench` (issue 20)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fixtures_models import SHARED_DATA
from typer.testing import CliRunner

from engine.importers import ImportFileError, detect_format, load_requests
from engine.importers.iceb import N_NEGATIVES, read_class_prompts
from refact_tui.cli.main import app

ICEB = SHARED_DATA / "iceb"
ARBITRARY, RECTIFICATION = ICEB / "arbitrary_train.csv", ICEB / "rectification_train.csv"
CLASSES = ICEB / "modify_imgnet_prompts.csv"
HEADER = ["source", "dest", "prompts", "seed_train", "seeds", "source id", "dest id"]
TEMPLATES = "['An image of {}', 'A photo of {}', '{}']"
runner = CliRunner()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def iceb_rows() -> list[list]:
    return [["bighorn", "marmot", TEMPLATES, 7316, "[6843, '37720']", 3, 2],
            ["hen", "suit", TEMPLATES, 11, "[]", 4, 9],
            ["tench", "goldfish", "['A photo of {}']", 12, "[1]", 0, 1]]


def class_rows() -> list[list]:
    """Ten classes of two prompts each (indices follow the order of the classes)."""
    names = ["tench", "goldfish", "marmot", "bighorn", "hen", "ostrich", "junco", "robin", "jay", "kite"]
    return [[f"A {n} in picture {k}", n, 100 + k] for n in names for k in range(2)]


def _classes(tmp_path) -> Path:
    return write_csv(tmp_path / "classes.csv", ["text prompt", "class name", "random seed"], class_rows())


def test_detection_templates_and_probes(tmp_path):
    f = write_csv(tmp_path / "iceb.csv", HEADER, iceb_rows())
    assert detect_format(f, f.read_text()) == "iceb"
    r = load_requests(f)
    assert r.ok and r.format == "iceb" and len(r.requests) == 3
    q = r.requests[0].request
    assert (q.prompt, q.source, q.target, q.subject) == ("An image of bighorn", "An image of bighorn",
                                                         "An image of marmot", "bighorn")
    assert [(p.prompt, p.source, p.target) for p in q.positives] == [
        ("A photo of bighorn", "A photo of bighorn", "A photo of marmot"), ("bighorn", "bighorn", "marmot")]
    assert q.negatives == () and q.extra == {"source_id": "3", "dest_id": "2", "seed_train": "7316"}
    assert r.requests[2].request.positives == ()  # one template: the edit prompt only


def test_negatives_are_unedited_classes_and_deterministic(tmp_path):
    rows = iceb_rows()
    f = write_csv(tmp_path / "iceb.csv", HEADER, rows)
    classes = _classes(tmp_path)
    a = load_requests(f, negatives=classes)
    assert a.ok
    # edited by name or id: tench(0) goldfish(1) marmot(2) bighorn(3) hen(4), and kite by its id 9 (dest suit)
    edited = {"tench", "goldfish", "marmot", "bighorn", "hen", "kite"}
    for row in a.requests:
        negs = row.request.negatives
        assert len(negs) == 4  # ostrich, junco, robin, jay are left: fewer than N_NEGATIVES
        names = [n.prompt.split()[1] for n in negs]
        assert len(set(names)) == len(names) and not set(names) & edited
        dest = row.request.target.replace("An image of ", "").replace("A photo of ", "")
        assert all(n.source == n.prompt and n.target == n.prompt.replace(n.prompt.split()[1], dest) for n in negs)
    # the same file gives the same probes, and a row's probes do not depend on the order of the rows
    b = load_requests(write_csv(tmp_path / "rev.csv", HEADER, rows[::-1]), negatives=classes)
    assert [r.request for r in a.requests] == [r.request for r in load_requests(f, negatives=classes).requests]
    assert [r.request.negatives for r in a.requests] == [r.request.negatives for r in b.requests[::-1]]


def test_class_prompt_indices_follow_imagenet_blocks(tmp_path):
    rows = [[f"A maillot {k}", "maillot", k] for k in range(10)] + [["A crane", "crane", 1]]
    got = read_class_prompts(tmp_path / "c.csv", write_csv(tmp_path / "c.csv", ["text prompt", "class name",
                                                                                   "random seed"], rows).read_text())
    assert [c.index for c in got] == [0] * 5 + [1] * 5 + [2]


@pytest.mark.parametrize("cell, column", [("['An image of {}', 'A photo of {}'", "prompts"),
                                          ("__import__('os').system('true')", "prompts"),
                                          ("['no placeholder']", "prompts"), ("[]", "prompts")])
def test_malformed_list_string_is_one_problem_naming_the_row(tmp_path, cell, column):
    rows = iceb_rows()
    rows[1][2] = cell
    r = load_requests(write_csv(tmp_path / "bad.csv", HEADER, rows))
    assert not r.requests and len(r.errors) == 1
    assert (r.errors[0].row, r.errors[0].column) == (2, column) and "\n" not in str(r.errors[0])


def test_negatives_of_another_format_or_for_another_format_is_one_line(tmp_path):
    f = write_csv(tmp_path / "iceb.csv", HEADER, iceb_rows())
    with pytest.raises(ImportFileError, match="is not an ICEB class-prompt file") as exc:
        load_requests(f, negatives=f)
    assert "\n" not in str(exc.value)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text(json.dumps({"prompt": "A cat", "source": "cat", "target": "dog"}) + "\n")
    with pytest.raises(ImportFileError, match="--negatives applies to ICEB files only"):
        load_requests(jsonl, negatives=_classes(tmp_path))


@pytest.mark.skipif(not (ARBITRARY.is_file() and CLASSES.is_file()), reason="ICEB files absent")
def test_iceb_train_files_import_counts_and_negatives():
    classes = read_class_prompts(CLASSES, CLASSES.read_text(encoding="utf-8"))
    assert len({c.index for c in classes}) == 1000
    for path, n in ((ARBITRARY, 300), (RECTIFICATION, 207)):
        r = load_requests(path, negatives=CLASSES)
        assert r.ok and r.format == "iceb" and len(r.requests) == n and not r.duplicates
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        names = {row[k].lower() for row in rows for k in ("source", "dest")}
        ids = {int(row[k]) for row in rows for k in ("source id", "dest id")}
        by_prompt = {c.prompt: c for c in classes}
        for imported in r.requests:
            negs = imported.request.negatives
            assert len(negs) == N_NEGATIVES
            cls = [by_prompt[p.prompt] for p in negs]
            assert len({c.index for c in cls}) == N_NEGATIVES
            assert not any(c.index in ids or c.name.lower() in names for c in cls)


# ----- through the CLI: one line, non-zero exit, nothing queued ---------------------------------


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("iceb") / "w"
    r = runner.invoke(app, ["--workspace", str(root), "init", "--model", str(model_dir)])
    assert r.exit_code == 0, r.output
    return root


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _queued(root) -> list:
    return json.loads(_invoke("--workspace", root, "queue", "ls", "--json").stdout)


def test_queue_import_iceb_with_negatives_and_its_errors(ws_root, tmp_path):
    f = write_csv(tmp_path / "iceb.csv", HEADER, iceb_rows())
    rows = iceb_rows()
    rows[1][2] = "['An image of {}'"
    bad = write_csv(tmp_path / "bad.csv", HEADER, rows)
    r = _invoke("--workspace", ws_root, "queue", "import", bad, "--negatives", _classes(tmp_path))
    assert r.exit_code == 1 and "bad.csv, row 2, column 'prompts'" in " ".join(r.stderr.split())
    assert _queued(ws_root) == []
    r = _invoke("--workspace", ws_root, "queue", "import", f, "--negatives", f)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "not an ICEB class-prompt file" in r.stderr
    assert _queued(ws_root) == []
    r = _invoke("--workspace", ws_root, "queue", "import", f, "--negatives", _classes(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["added"]) == 3
    queued = _queued(ws_root)
    assert all(len(j["request"]["negatives"]) == 4 for j in queued)
    assert json.loads(_invoke("--workspace", ws_root, "queue", "clear", "--json").stdout) == {"removed": 3}


def test_bench_negatives_of_another_format_is_one_line(ws_root, tmp_path):
    f = write_csv(tmp_path / "iceb.csv", HEADER, iceb_rows())
    r = _invoke("--workspace", ws_root, "bench", f, "--text-only", "--negatives", f, "--hp", "layer=2")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "not an ICEB class-prompt file" in r.stderr
    r = _invoke("--workspace", ws_root, "bench", "ls", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
