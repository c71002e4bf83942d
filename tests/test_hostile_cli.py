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


def one_error_line(r, code: int = 1) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.output)
    assert "Usage:" not in r.output and "Traceback" not in r.output
    return lines[0]


def test_hp_without_a_value_and_empty_slots_are_one_line(ws_root, tmp_path):
    """Issue 21 items 5 and 7: `--hp junk` was Click's usage box; `--slots ','` meant "every slot"."""
    before = invoke("--workspace", ws_root, "queue", "ls", "--json").stdout
    add = ["--workspace", ws_root, "queue", "add", "--prompt", "A cat", "--source", "a cat", "--target", "a dog"]
    assert "--hp 'junk' is not KEY=VALUE" in one_error_line(invoke(*add, "--method", "uce", "--hp", "junk"))
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "A cat", "source": "a cat", "target": "a dog"}) + "\n")
    assert "--hp '=1' is not KEY=VALUE" in one_error_line(invoke("--workspace", ws_root, "bench", "run", f,
                                                                 "--hp", "=1"))
    for value in (",", ""):
        assert "names no encoder slot" in one_error_line(invoke(*add, "--slots", value))
    assert invoke("--workspace", ws_root, "queue", "ls", "--json").stdout == before


def test_uce_preserve_texts_are_length_checked_when_queued(ws_root, tmp_path):
    """Issue 21 item 8: a 100-word preserved concept failed at run time instead of at the door."""
    long = " ".join(["banana"] * 100)
    before = invoke("--workspace", ws_root, "queue", "ls", "--json").stdout
    add = ["--workspace", ws_root, "queue", "add", "--prompt", "A cat", "--source", "a cat", "--target", "a dog",
           "--method", "uce", "--hp", f'preserve=["A duke", "{long}"]']
    assert "--hp preserve[1] is 102 tokens long, over the text_encoder limit of" in one_error_line(invoke(*add))
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "A cat", "source": "a cat", "target": "a dog"}) + "\n")
    r = invoke("--workspace", ws_root, "queue", "import", f, "--method", "uce", "--hp", f'preserve=["{long}"]')
    assert r.exit_code == 1 and "preserve[0] is 102 tokens long" in r.output + r.stderr
    assert invoke("--workspace", ws_root, "queue", "ls", "--json").stdout == before


def test_queue_retry_takes_several_ids_all_failed_and_a_reason(tmp_path, model_dir):
    """Issue 21 item 10: requeue the jobs a refused batch or a typo failed in one command."""
    from worker_helpers import new_workspace, queue, sample_requests

    from refact_tui.services.workspace import Workspace
    from store.jobs import claim_next, finish_job, list_jobs

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        jobs = queue(ws, sample_requests(4))
        for job, why in zip(jobs, ["batch refused", "batch refused", "out of memory", None]):
            claim_next(ws.db, "w")
            if why:
                finish_job(ws.db, job.id, "failed", error=why)
            else:
                finish_job(ws.db, job.id, "cancelled")
    base = ["--workspace", root, "queue", "retry"]
    assert "--reason is empty" in one_error_line(invoke(*base, "--reason", " "))
    assert "no failed job's error contains 'disk'" in one_error_line(invoke(*base, "--reason", "disk"))
    r = invoke(*base, "--reason", "BATCH")
    assert r.exit_code == 0 and f"jobs {jobs[0].id}, {jobs[1].id} queued again" in r.stdout
    assert "is queued; only failed/cancelled" in one_error_line(invoke(*base, jobs[3].id, jobs[0].id))
    r = invoke(*base, jobs[3].id, "--all-failed")
    assert r.exit_code == 0 and f"jobs {jobs[3].id}, {jobs[2].id} queued again" in r.stdout
    with Workspace.open(root) as ws:
        assert [j.state for j in list_jobs(ws.db)] == ["queued"] * 4


@pytest.mark.parametrize("args, says", [
    (["run", "--batch", "x"], "Invalid value for '--batch'"),
    (["queue", "add", "--prompt", "x"], "Missing option '--source'"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(args, says):
    """Issue 21: a value Click cannot parse (e.g. `--batch x`) gave Click's multi-line usage box."""
    line = one_error_line(invoke(*args), code=2)
    assert says in line and line.endswith("--help`")
