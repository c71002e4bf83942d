"""Multi-encoder workspaces through the CLI: per-slot layers, --slots, per-slot results in `show`."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from refact_tui.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sdxl_edit_records_every_slot_and_bad_slots_are_one_line(tmp_path, pipeline_dir_for):
    root = tmp_path / "w"
    assert invoke("--workspace", root, "init", "--model", pipeline_dir_for("sdxl")).exit_code == 0
    add = ("--workspace", root, "queue", "add", "--prompt", "the prince of wales", "--source", "prince charles",
           "--target", "a red dog", "--max-steps", "4")
    # bad input: one line each, nothing queued
    for extra, needle in ((("--slots", "text_encoder_9"), "no encoder slot 'text_encoder_9'"),
                          (("--layer", "text_encoder=3"), "layer 3 is out of range for text_encoder (editable: layers 0..1"),
                          (("--layer", "text_encoder=x"), "is not N or SLOT=N"),
                          (("--target", "dog " * 80), "(text_encoder), over the limit of 77")):
        r = invoke(*add, *extra)
        assert r.exit_code == 1, r.output
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert json.loads(invoke("--workspace", root, "queue", "ls", "--json").stdout) == []
    from refact_tui.services.workspace import Workspace
    from store.base_models import get_base_model

    with Workspace.open(root) as ws:  # per-slot workspace defaults recorded at init
        slots = get_base_model(ws.db, ws.history().base_model_id).config["slots"]
    assert list(slots) == ["text_encoder", "text_encoder_2"]
    # hidden_states[-2] at EOS: layers from n-2 on cannot reach it (an edit acts at the subject token)
    assert slots["text_encoder"]["editable"] == [0, slots["text_encoder"]["num_layers"] - 3]
    assert slots["text_encoder_2"]["readout"] == "penultimate+embeds" and "default_layer" in slots["text_encoder_2"]

    r = invoke(*add, "--layer", "text_encoder=1", "--layer", "text_encoder_2=2")
    assert r.exit_code == 0, r.output
    r = invoke("--workspace", root, "run", "--device", "cpu")
    assert r.exit_code == 0, r.output
    show = json.loads(invoke("--workspace", root, "show", "1", "--json").stdout)
    slots = show["slots"]
    assert [(s["slot"], s["layer"], s["readout"]) for s in slots] == [
        ("text_encoder", 1, "penultimate"), ("text_encoder_2", 2, "penultimate+embeds")]
    assert all(s["verify_error"] < 1e-4 and len(s["weights_hash"]) == 64 for s in slots)
    text = invoke("--workspace", root, "show", "1").stdout
    assert "slot    text_encoder: layer 1" in text and "slot    text_encoder_2: layer 2" in text

    # a fork copies the per-slot rows; rollback rebuilds every slot from base and verifies the combined hash
    r = invoke("--workspace", root, "fork", "--at", "1", "--name", "side")
    assert r.exit_code == 0, r.output
    forked = json.loads(invoke("--workspace", root, "history", "--json").stdout)
    copy = json.loads(invoke("--workspace", root, "show", str(forked[-1]["id"]), "--json").stdout)
    assert [(s["slot"], s["weights_hash"]) for s in copy["slots"]] == [(s["slot"], s["weights_hash"]) for s in slots]
    assert invoke("--workspace", root, "checkout", "main").exit_code == 0
    r = invoke("--workspace", root, "rollback", "0", "--json")
    assert r.exit_code == 0, r.output

    # a subset: only text_encoder_2 is edited
    r = invoke(*add, "--slots", "text_encoder_2")
    assert r.exit_code == 0, r.output
    assert invoke("--workspace", root, "run", "--device", "cpu").exit_code == 0
    edits = json.loads(invoke("--workspace", root, "history", "--json").stdout)
    latest = max(edits, key=lambda e: e["seq"]) if isinstance(edits, list) else None
    assert latest is not None
    show = json.loads(invoke("--workspace", root, "show", str(latest["id"]), "--json").stdout)
    assert [s["slot"] for s in show["slots"]] == ["text_encoder_2"]

    r = invoke("--workspace", root, "stats", "compute", "--slot", "text_encoder_2", "--layer", "1", "--samples", "8",
               "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert [(e["slot"], e["layer"], e["mode"]) for e in json.loads(r.stdout)] == [("text_encoder_2", 1, "longest")]


def test_run_progress_bar_follows_each_slot_of_a_multi_slot_edit():
    """`refact run`'s bar shows the slot being optimised and its own step count (SlotStep events)."""
    from engine.events import StepEvent
    from refact_tui.cli.run import JobProgress, make_progress
    from refact_tui.services.worker import JobStarted, SlotStep

    progress = make_progress(disable=True)
    bar = JobProgress(progress)
    step = lambda i, p: StepEvent(step=i, loss=1.0 - p, nll=1.0 - p, wd=0.0, p_target=p, delta_norm=0.0, elapsed=0.0)  # noqa: E731
    bar(JobStarted(7, 1, 1, "the prince of wales", "prince charles", "prince william", 10, 1))
    bar(step(0, 0.1))
    bar(SlotStep("text_encoder", step(0, 0.1)))
    for i in range(1, 4):
        bar(step(i, 0.2 * i))
        bar(SlotStep("text_encoder", step(i, 0.2 * i)))
    task = progress.tasks[0]
    assert "[text_encoder]" in task.description and task.completed == 4
    bar(SlotStep("text_encoder_2", step(0, 0.05)))
    bar(SlotStep("text_encoder_2", step(1, 0.3)))
    assert "[text_encoder_2]" in task.description and task.completed == 2 and task.fields["p"] == "0.300"
