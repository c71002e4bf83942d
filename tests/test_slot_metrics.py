"""Every encoder slot measured (issue 8): per-slot text metrics, per-slot step rows, --preserve per slot."""

from __future__ import annotations

import pytest
from worker_helpers import FAST, new_workspace, queue, sample_requests, spy_batch_preserve

# tiny SDXL: text_encoder is editable at layers 0..1, text_encoder_2 at 0..2
SDXL = FAST.with_overrides(layer=1, max_steps=6, slot_layers=(("text_encoder", 1), ("text_encoder_2", 2)))


def _direct(ws, model_dir, slot_name: str, request, hp):
    """The slot's text metrics recomputed on a fresh load of the head model (no worker caches)."""
    from engine.base_weights import base_fc2_of
    from engine.evaluation.text_metrics import FeatureCache, text_metrics
    from refact_tui.services.working_model import load_history_model

    model = load_history_model(ws, ws.history().id, device="cpu").model
    slot = model.slot(slot_name)
    return text_metrics(slot, FeatureCache.frozen(slot, base_fc2_of(slot)), request, similarity=hp.similarity,
                        temperature=hp.temperature).values()


EVENTS: list = []  # the worker events of the sdxl_ws run


@pytest.fixture(scope="module")
def sdxl_ws(tmp_path_factory, pipeline_dir_for):
    from refact_tui.services.runner import run_worker

    ws = new_workspace(tmp_path_factory.mktemp("sdxl") / "w", pipeline_dir_for("sdxl"))
    reqs = sample_requests(2)
    queue(ws, reqs[:1], SDXL)
    # the second edit protects earlier edits: text_encoder at the same layer, text_encoder_2 at another
    queue(ws, reqs[1:2], SDXL.with_overrides(preserve=5.0, slot_layers=(("text_encoder", 1), ("text_encoder_2", 1))))
    import engine.methods.refact.edit

    seen: list[tuple[str, list[str]]] = []
    real = engine.methods.refact.edit.compute_edit

    def spy(slot, request, hparams, **kw):
        seen.append((slot.name, [r.prompt for r in kw.get("preserve_requests", ())]))
        return real(slot, request, hparams, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine.methods.refact.edit, "compute_edit", spy)
    try:
        assert run_worker(ws, device="cpu", on_event=EVENTS.append).done == 2
    finally:
        mp.undo()
    yield ws, reqs, seen
    ws.close()


def test_sdxl_edit_has_per_slot_metrics_and_their_mean_as_headline(sdxl_ws, pipeline_dir_for):
    from store.edits import list_edits
    from store.metrics import latest_metrics, slot_metrics

    ws, reqs, _ = sdxl_ws
    first, second = list_edits(ws.db, ws.history().id)
    per = slot_metrics(ws.db, second.id)
    assert list(per) == ["text_encoder", "text_encoder_2"]
    head = {m.name: m.value for m in latest_metrics(ws.db, second.id) if m.space == "text"}
    slot_values = {k: {m.name: m.value for m in v} for k, v in per.items()}
    for name in ("efficacy", "p_target", "generality", "specificity", "f1"):
        assert name in head
        assert head[name] == pytest.approx((slot_values["text_encoder"][name] + slot_values["text_encoder_2"][name]) / 2,
                                           abs=1e-9)
    # each slot's values are that slot's own, against its own frozen base features
    for slot in per:
        direct = _direct(ws, pipeline_dir_for("sdxl"), slot, reqs[1], second.hparams)
        for name, value in direct.items():
            assert slot_values[slot][name] == pytest.approx(value, abs=1e-6), (slot, name)
    assert slot_values["text_encoder"]["p_target"] != pytest.approx(slot_values["text_encoder_2"]["p_target"], abs=1e-6)
    # retention of the first edit, per slot and as the mean over its slots
    ret = {m.slot: m.value for m in latest_metrics(ws.db, first.id, slot=None) if m.name == "retention_efficacy"}
    assert set(ret) == {"", "text_encoder", "text_encoder_2"}
    assert ret[""] == pytest.approx((ret["text_encoder"] + ret["text_encoder_2"]) / 2, abs=1e-9)


def test_sdxl_steps_rows_cover_every_slot(sdxl_ws):
    from store.edit_slots import edit_slots
    from store.edits import list_edits
    from store.steps import slot_steps_for_edit, steps_for_edit

    ws, _, _ = sdxl_ws
    for edit in list_edits(ws.db, ws.history().id):
        by_slot = slot_steps_for_edit(ws.db, edit.id)
        rows = {r.slot: r for r in edit_slots(ws.db, edit.id)}
        assert list(by_slot) == ["text_encoder", "text_encoder_2"]
        for slot, steps in by_slot.items():
            assert [s.step for s in steps] == list(range(rows[slot].steps_run))
            assert steps[-1].p_target == pytest.approx(rows[slot].p_target, abs=1e-6)
        assert steps_for_edit(ws.db, edit.id) == by_slot["text_encoder"]  # the default: the first slot
    # the worker also emits every slot's steps as SlotStep events (the `refact run` bar follows them)
    from refact_tui.services.worker import SlotStep

    emitted = [(e.slot, e.event.step) for e in EVENTS if isinstance(e, SlotStep)]
    expected = [(r.slot, s.step) for edit in list_edits(ws.db, ws.history().id)
                for r in edit_slots(ws.db, edit.id) for s in slot_steps_for_edit(ws.db, edit.id)[r.slot]]
    assert emitted == expected


def test_preserve_protects_per_slot_at_that_slots_layer(sdxl_ws):
    ws, reqs, seen = sdxl_ws
    # edit 1: nothing to protect; edit 2: text_encoder (layer 1 again) protects edit 1, text_encoder_2
    # (now layer 1, edit 1 was at layer 2) protects nothing
    assert seen == [("text_encoder", []), ("text_encoder_2", []),
                    ("text_encoder", [reqs[0].prompt]), ("text_encoder_2", [])]


def test_sdxl_text_eval_is_per_slot_with_history_aggregates(sdxl_ws):
    from refact_tui.services.evaluation import run_text_eval

    ws, _, _ = sdxl_ws
    summary = run_text_eval(ws, history=True, device="cpu")
    hist = summary.slot_metrics[None]
    assert set(hist) == {"text_encoder", "text_encoder_2"}
    for name in ("efficacy", "specificity"):
        mean = (hist["text_encoder"][name] + hist["text_encoder_2"][name]) / 2
        assert summary.metrics[None][name] == pytest.approx(mean, abs=1e-9)
    for edit_id, values in summary.metrics.items():
        if edit_id is None:
            continue
        slots = summary.slot_metrics[edit_id]
        assert values["p_target"] == pytest.approx(sum(s["p_target"] for s in slots.values()) / 2, abs=1e-9)


def test_single_slot_metrics_are_the_whole_edit_rows_only(tmp_path, model_dir):
    from engine.base_weights import base_fc2_of
    from engine.evaluation.text_metrics import FeatureCache, text_metrics
    from refact_tui.services.runner import run_worker
    from refact_tui.services.working_model import load_history_model
    from store.edits import list_edits
    from store.metrics import latest_metrics, slot_metrics
    from store.steps import slot_steps_for_edit

    with new_workspace(tmp_path / "w", model_dir) as ws:
        req = sample_requests(1)[0]
        queue(ws, [req])
        assert run_worker(ws, device="cpu").done == 1
        (edit,) = list_edits(ws.db, ws.history().id)
        assert slot_metrics(ws.db, edit.id) == {}
        rows = latest_metrics(ws.db, edit.id, slot=None)
        assert {m.slot for m in rows} == {""}
        model = load_history_model(ws, ws.history().id, device="cpu").model
        want = text_metrics(model, FeatureCache.frozen(model, base_fc2_of(model)), req,
                            similarity=FAST.similarity, temperature=FAST.temperature).values()
        got = {m.name: m.value for m in rows}
        assert got == pytest.approx(want, abs=1e-7) and set(got) == set(want)
        assert list(slot_steps_for_edit(ws.db, edit.id)) == ["text_encoder"]


def test_show_and_eval_print_each_slots_metrics(sdxl_ws):
    import json

    from typer.testing import CliRunner

    from refact_tui.cli.main import app
    from store.edits import list_edits

    ws, _, _ = sdxl_ws
    edit = list_edits(ws.db, ws.history().id)[-1]
    runner = CliRunner()
    r = runner.invoke(app, ["--workspace", str(ws.root), "show", str(edit.id), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    per = out["slot_metrics"]
    assert set(per) == {"text_encoder", "text_encoder_2"}
    head = {m["name"]: m["value"] for m in out["metrics"] if m["space"] == "text"}
    assert head["efficacy"] == pytest.approx((per["text_encoder"]["text/efficacy"]
                                              + per["text_encoder_2"]["text/efficacy"]) / 2, abs=1e-9)
    assert set(out["slot_curves"]) == {"text_encoder", "text_encoder_2"}
    text = runner.invoke(app, ["--workspace", str(ws.root), "show", str(edit.id)]).stdout
    assert "[per slot: text_encoder " in text and ", text_encoder_2 " in text
    r = runner.invoke(app, ["--workspace", str(ws.root), "eval", str(edit.id), "--text-only", "--device", "cpu",
                            "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert set(report["per_slot"]) == {"text_encoder", "text_encoder_2"}
    line = next(m for m in report["lines"] if m["name"] == "p_target")
    assert line["text"] == pytest.approx(sum(s["p_target"] for s in report["per_slot"].values()) / 2, abs=1e-9)
    table = runner.invoke(app, ["--workspace", str(ws.root), "eval", str(edit.id), "--text-only", "--device", "cpu"])
    assert table.exit_code == 0 and "text space per encoder slot" in table.stdout


def test_sdxl_batch_edits_the_first_slot_and_protects_only_its_edits(tmp_path, pipeline_dir_for, monkeypatch):
    """A batch on a two-slot model changes text_encoder: its step rows and per-slot metric rows are
    that slot's, and --preserve protects only earlier edits of text_encoder (not one of text_encoder_2
    at the same layer number). Jobs for both slots never enter a batch: they run one at a time."""
    from refact_tui.services.queue import add_edit
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings
    from store.edits import list_edits
    from store.metrics import latest_metrics, slot_metrics
    from store.steps import slot_steps_for_edit

    seen = spy_batch_preserve(monkeypatch)
    reqs = sample_requests(4)
    hp = FAST.with_overrides(layer=1, max_steps=4, preserve=1.0)
    with new_workspace(tmp_path / "w", pipeline_dir_for("sdxl")) as ws:
        queue(ws, reqs[:1], hp.with_overrides(slots=("text_encoder_2",)))  # text_encoder_2 at layer 1
        queue(ws, reqs[1:2], hp)  # both slots, text_encoder at layer 1
        assert run_worker(ws, device="cpu").done == 2
        queue(ws, reqs[2:], hp)  # both slots: run alone even under --batch, so every slot is edited
        assert run_worker(ws, device="cpu", batch=BatchSettings(size=2, insert="joint")).done == 2
        alone = list_edits(ws.db, ws.history().id)[-2:]
        assert all(e.kind != "batch" for e in alone)
        assert all(list(slot_steps_for_edit(ws.db, e.id)) == ["text_encoder", "text_encoder_2"] for e in alone)
        for r in reqs[2:]:  # the first slot alone: these form a batch
            add_edit(ws, r, hp.with_overrides(slots=("text_encoder",)), allow_duplicate=True)
        assert run_worker(ws, device="cpu", batch=BatchSettings(size=2, insert="joint")).done == 2
        batch = list_edits(ws.db, ws.history().id)[-1]
        assert batch.kind == "batch"
        assert list(slot_steps_for_edit(ws.db, batch.id)) == ["text_encoder"]
        per = slot_metrics(ws.db, batch.id)
        assert list(per) == ["text_encoder"]
        head = {m.name: m.value for m in latest_metrics(ws.db, batch.id)}
        assert {m.name: m.value for m in per["text_encoder"]} == pytest.approx(head, abs=1e-12)
    assert seen == [[reqs[1].prompt, reqs[2].prompt, reqs[3].prompt]]
