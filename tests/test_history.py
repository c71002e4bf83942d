"""Rollback, fork, replay and checkout: hashes prove the rebuilt models are bit-identical."""

from __future__ import annotations

import pytest
from fixtures_models import tiny_pipeline_dir
from worker_helpers import FAST, queue, rebuild_hash, sample_requests, workspace_with_edits


@pytest.fixture(scope="module")
def template(tmp_path_factory, model_dir):
    """A closed workspace with three applied edits; each test works on a copy."""
    root = tmp_path_factory.mktemp("hist") / "w"
    ws, _, _ = workspace_with_edits(root, model_dir, 3)
    ws.close()
    return root


@pytest.fixture()
def ws(tmp_path, template):
    import shutil

    from refact_tui.services.workspace import Workspace

    shutil.copytree(template, tmp_path / "w")
    ws = Workspace.open(tmp_path / "w")
    yield ws
    ws.close()


def test_rollback_rebuilds_the_exact_state_after_edit_n(ws):
    from refact_tui.services.history import edit_detail, list_history, rollback
    from refact_tui.services.working_model import load_history_model

    edits = list_history(ws)
    res = rollback(ws, 1)
    assert (res.from_seq, res.to_seq, res.rolled_back) == (3, 1, 2)
    assert res.weights_hash == edits[0].weights_hash
    assert [e.status for e in list_history(ws)] == ["applied", "rolled_back", "rolled_back"]  # kept, not deleted
    state = load_history_model(ws, device="cpu")
    assert state.head_seq == 1 and state.model.encoder_hash() == edits[0].weights_hash
    assert rollback(ws, 0).weights_hash == state.base_encoder_hash
    detail = edit_detail(ws, edits[1].id)
    assert detail.curve.steps == edits[1].steps_run and detail.curve.min_loss <= detail.curve.first_loss
    with pytest.raises(Exception, match="after the head"):
        rollback(ws, 2)


def test_new_edit_after_rollback_gets_the_next_seq_and_applies_on_the_rolled_back_model(ws, model_dir):
    from refact_tui.services.history import list_history, rollback
    from refact_tui.services.runner import run_worker

    rollback(ws, 1)
    queue(ws, sample_requests(4)[3:])
    assert run_worker(ws, device="cpu").done == 1
    edits = list_history(ws)
    assert [(e.seq, e.status) for e in edits] == [(1, "applied"), (2, "rolled_back"), (3, "rolled_back"),
                                                  (4, "applied")]
    assert rebuild_hash(model_dir, [ws.resolve(edits[0].delta_path), ws.resolve(edits[3].delta_path)]) \
        == edits[3].weights_hash


def test_fork_checkout_and_replay_share_deltas_with_identical_hashes(ws):
    from refact_tui.services.history import checkout, fork, list_all_histories, list_history, replay
    from refact_tui.services.working_model import load_history_model

    main = list_history(ws)
    forked = fork(ws, 2, "branch")
    assert ws.history().id == forked.id and forked.head_seq == 2 and forked.forked_at_seq == 2
    f_edits = list_history(ws)
    assert [e.source_edit_id for e in f_edits] == [main[0].id, main[1].id]
    assert load_history_model(ws, device="cpu").weights_hash == main[1].weights_hash

    checkout(ws, "main")
    again = replay(ws, name="again")
    assert again.head_seq == 3 and ws.history().name == "again"
    r_edits = list_history(ws)
    assert [e.weights_hash for e in r_edits] == [e.weights_hash for e in main]
    assert [e.delta_sha256 for e in r_edits] == [e.delta_sha256 for e in main]
    infos = {i.history.name: i for i in list_all_histories(ws)}
    assert infos["again"].current and infos["main"].applied == 3 and infos["branch"].applied == 2


def test_replay_reoptimize_queues_the_requests_with_overrides(ws):
    from refact_tui.services.history import list_history, replay
    from store.jobs import list_jobs

    main = list_history(ws)
    h = replay(ws, reoptimize=True, hparams={"lr": 0.05}, name="reopt")
    jobs = list_jobs(ws.db, h.id)
    assert [j.request for j in jobs] == [e.request for e in main]
    assert all(j.hparams == FAST.with_overrides(lr=0.05) and j.state == "queued" for j in jobs)
    assert h.head_seq == 0 and ws.history().id == h.id


def test_replay_onto_a_different_encoder_needs_force(ws, tmp_path_factory):
    from engine.errors import DeltaIntegrityError
    from refact_tui.services.history import list_history, replay

    other = tiny_pipeline_dir(tmp_path_factory, seed=1)
    with pytest.raises(DeltaIntegrityError, match="--force"):
        replay(ws, model=other)
    h = replay(ws, model=other, force=True, name="other")
    edits = list_history(ws)
    assert h.head_seq == 3 and len(edits) == 3
    assert edits[-1].weights_hash == rebuild_hash(other, [ws.resolve(e.delta_path) for e in edits])
    # the new base is described like `refact init` does, so queue checks and defaults work on it
    from store.base_models import get_base_model

    assert get_base_model(ws.db, h.base_model_id).config["num_layers"] == 4


def test_replay_onto_a_base_whose_unet_differs_needs_force(tmp_path, model_dir):
    """Issue 21 item 17: replay --onto compared only the text encoder and re-applied TIME/UCE deltas onto
    another UNet; every component the deltas touch is compared now."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel
    from worker_helpers import new_workspace

    from engine.delta import EditDelta
    from engine.errors import DeltaIntegrityError
    from engine.request import EditRequest
    from refact_tui.services.history import list_all_histories, list_history, replay
    from refact_tui.services.methods import with_method
    from refact_tui.services.queue import add_edit
    from refact_tui.services.runner import run_worker

    with new_workspace(tmp_path / "w", model_dir) as ws:
        add_edit(ws, with_method(EditRequest("A banana", "A banana", "A blue banana"), "time"))
        assert run_worker(ws, device="cpu", text_metrics=False).done == 1
        (edit,) = list_history(ws)
        from typer.testing import CliRunner

        from refact_tui.cli.history import edit_where
        from refact_tui.cli.main import app

        assert edit_where(edit).startswith("time (unet: ")  # its component and modules, not layer -1
        shown = CliRunner().invoke(app, ["--workspace", str(tmp_path / "w"), "show", str(edit.id)],
                                   terminal_width=300).stdout
        assert "layer time (unet: " in " ".join(shown.split()) and "layer -1" not in shown
        name = EditDelta.load(ws.resolve(edit.delta_path)).updates[0].module
        other = tmp_path / "other"
        shutil.copytree(model_dir, other)
        unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
        with torch.no_grad():
            unet.get_submodule(name).weight[0, 0] += 1e-3
        shutil.rmtree(other / "unet")
        unet.save_pretrained(str(other / "unet"), safe_serialization=True)
        n = len(list_all_histories(ws))
        with pytest.raises(DeltaIntegrityError, match=r"differs from the base of 'main' in what edit 1 changes "
                                                      r"\(unet\).*pass --force"):
            replay(ws, model=other)
        assert len(list_all_histories(ws)) == n  # nothing recorded
        assert replay(ws, model=other, force=True, name="forced").head_seq == 1


def test_rollback_past_the_head_names_a_valid_target(ws):
    """Issue 21: `refact rollback 9999` suggested `refact rollforward 9999`, which cannot work either."""
    from engine.errors import EngineError
    from refact_tui.services.history import rollback

    with pytest.raises(EngineError, match=r"pick 0\.\.3 \(0 = the base model\)") as info:
        rollback(ws, 9999)
    assert "rollforward" not in str(info.value)


def test_a_rollback_racing_a_committing_worker_reports_the_real_transition(ws, monkeypatch):
    """Issue 21: the head moved 3 -> 4 while the rollback rebuilt the model; it said "from 3 to 1"."""
    import refact_tui.services.working_model as state
    from refact_tui.services.history import list_history, rollback
    from store.edits import record_edit

    real = state.load_history_model
    last = list_history(ws)[-1]

    def rebuild_while_a_worker_commits(*a, **kw):
        out = real(*a, **kw)
        record_edit(ws.db, history_id=last.history_id, job_id=None, request=last.request, hparams=last.hparams,
                    status="applied", layer=last.layer, module=last.module, delta_path=last.delta_path,
                    delta_sha256=last.delta_sha256, weights_hash=None, steps_run=1, early_stopped=False,
                    p_target=0.5, delta_norm=None, division_factor=None, timings={}, device="cpu")
        return out

    monkeypatch.setattr(state, "load_history_model", rebuild_while_a_worker_commits)
    res = rollback(ws, 1)
    assert (res.from_seq, res.to_seq, res.rolled_back) == (4, 1, 3)
    assert [e.status for e in list_history(ws)] == ["applied"] + ["rolled_back"] * 3
