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
    from refact_tui.services.state import load_history_model

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
    from refact_tui.services.state import load_history_model

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
