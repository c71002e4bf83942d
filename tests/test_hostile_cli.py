"""Hostile input through the CLI: values refused at the door with one line naming the option, and
user text with markup or terminal control sequences printed escaped by every command (stored as is)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from refact_tui.cli.main import app

runner = CliRunner()

# rich markup that crashed `refact run`, an xterm window-title sequence, and colour codes
MARKUP = "The [/] Prince [bold]of Wales"
TITLE = "King \x1b]0;pwned\x07 of Spain"
COLOUR = "Prince \x1b[31mCharles\x1b[0m"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_safe(out: str) -> None:
    """No control character reaches the terminal: ESC and BEL show as escapes."""
    assert "\x1b" not in out and "\x07" not in out
    assert "Traceback" not in out


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, model_dir):
    from refact_tui.services.runner import STATS_SAMPLES_KEY
    from refact_tui.services.workspace import Workspace
    from store.db import set_meta

    root = tmp_path_factory.mktemp("hostile") / "w"
    r = invoke("--workspace", root, "init", "--model", model_dir)
    assert r.exit_code == 0, r.output
    with Workspace.open(root) as ws:
        set_meta(ws.db, STATS_SAMPLES_KEY, "40")
    return root


@pytest.mark.parametrize("option, value, shown", [
    ("--lr", "inf", "--lr (lr) must be a finite number in (0, 10]"),
    ("--lr", "1e400", "--lr (lr)"),
    ("--weight-decay", "nan", "--weight-decay (weight_decay) must be a finite number in [0, 1e+06]"),
    ("--weight-decay", "inf", "--weight-decay"),
    ("--temperature", "inf", "--temperature (temperature)"),
    ("--clamp-factor", "inf", "--clamp-factor (clamp_factor) must be a finite number in (0, 1e+06]"),
    ("--ridge", "nan", "--ridge (ridge)"),
    ("--ridge", "inf", "--ridge (ridge)"),
    ("--preserve", "nan", "--preserve (preserve)"),
    ("--preserve", "inf", "--preserve (preserve)"),
    ("--max-steps", "99999999999999999999999", "--max-steps (max_steps) must be an integer in 1..100000"),
    ("--prob-threshold", "nan", "--prob-threshold"),
    ("--layer", "-1", "--layer (layer) must be an integer in 0..1000"),
])
def test_queue_add_and_import_refuse_values_that_can_never_work(ws_root, tmp_path, option, value, shown):
    r = invoke("--workspace", ws_root, "queue", "add", "--prompt", "A cat", "--source", "a cat",
               "--target", "a dog", option, value)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and shown in lines[0]
    assert (value if value != "1e400" else "inf") in lines[0]
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "A cat", "source": "a cat", "target": "a dog"}) + "\n")
    r = invoke("--workspace", ws_root, "queue", "import", f, option, value)
    assert r.exit_code == 1 and shown in r.stderr
    assert json.loads(invoke("--workspace", ws_root, "queue", "ls", "--json").stdout) == []


def test_run_max_below_one_is_refused(ws_root):
    r = invoke("--workspace", ws_root, "run", "--max", "-1")
    assert r.exit_code == 2 and "--max" in r.output and "Traceback" not in r.output


def test_hostile_texts_print_escaped_everywhere_and_are_stored_byte_exact(ws_root, tmp_path):
    base = ["--workspace", ws_root]
    r = invoke(*base, "queue", "add", "--prompt", MARKUP, "--source", COLOUR, "--target", TITLE,
               "--layer", "2", "--max-steps", "3")
    assert r.exit_code == 0, r.output
    assert_safe(r.stdout)
    assert "[/]" in r.stdout and "\\x1b]0;pwned\\x07" in r.stdout

    jobs = json.loads(invoke(*base, "queue", "ls", "--json").stdout)
    assert [(j["request"]["prompt"], j["request"]["source"], j["request"]["target"]) for j in jobs] == [
        (MARKUP, COLOUR, TITLE)]  # stored byte-exact; only the display is escaped
    r = invoke(*base, "queue", "ls")
    assert r.exit_code == 0 and "[/]" in r.stdout and "\\x1b[31m" in r.stdout
    assert_safe(r.stdout)

    # errors that quote user text: an import row and a bad subject
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": TITLE, "source": MARKUP, "target": MARKUP}) + "\n")
    r = invoke(*base, "queue", "import", f)
    assert r.exit_code == 1 and "[/]" in r.stderr
    assert_safe(r.stderr)
    r = invoke(*base, "queue", "add", "--prompt", "A cat", "--source", "x", "--target", "y", "--subject", TITLE)
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "pwned" in r.stderr
    assert_safe(r.stderr)

    # `refact run` prints a progress line with the prompt: it crashed on "[/]" before
    r = invoke(*base, "run", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "1 edit(s) applied" in r.stdout and "[/]" in r.stdout
    assert_safe(r.output)

    edits = json.loads(invoke(*base, "history", "--json").stdout)
    assert [(e["request"]["prompt"], e["request"]["target"]) for e in edits] == [(MARKUP, TITLE)]
    for args in (("history",), ("show", edits[0]["id"]), ("histories",)):
        r = invoke(*base, *args)
        assert r.exit_code == 0, (args, r.output)
        assert_safe(r.stdout)
    r = invoke(*base, "show", edits[0]["id"])
    assert "[/] Prince [bold]of Wales" in r.stdout and "\\x1b]0;pwned\\x07" in r.stdout


def test_import_options_for_encoding_and_duplicates(ws_root, tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"prompt": "Caf\xe9 owner", "source": "a man", "target": "a woman"}\n')
    r = invoke("--workspace", ws_root, "queue", "import", f)
    assert r.exit_code == 1 and "offset 15" in r.stderr and "--encoding-errors replace" in r.stderr
    r = invoke("--workspace", ws_root, "queue", "import", f, "--encoding-errors", "replace", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["added"]) == 1
    add = ["--workspace", ws_root, "queue", "add", "--prompt", "Caf\ufffd owner", "--source", "a man",
           "--target", "a woman"]
    r = invoke(*add)
    assert r.exit_code == 1 and "already queued as job" in r.stderr and "--allow-duplicate" in r.stderr
    r = invoke(*add, "--allow-duplicate", "--json")
    assert r.exit_code == 0
    assert json.loads(invoke("--workspace", ws_root, "queue", "clear", "--json").stdout) == {"removed": 2}
