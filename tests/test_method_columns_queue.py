"""A queued TIME job, its edit and a replay of it record the method in the method columns."""

from __future__ import annotations


def test_time_job_edit_and_reoptimized_replay_carry_the_method_columns(tmp_path, model_dir):
    from worker_helpers import new_workspace

    from engine.request import EditRequest
    from refact_tui.services.history import replay
    from refact_tui.services.methods import with_method
    from refact_tui.services.queue import add_edit
    from refact_tui.services.runner import run_worker
    from store.edits import applied_edits
    from store.jobs import list_jobs

    with new_workspace(tmp_path / "w", model_dir) as ws:
        job = add_edit(ws, with_method(EditRequest("A banana", "A banana", "A blue banana"), "time", {"lam": 0.2}))
        assert job.method == "time" and job.method_hparams["lam"] == 0.2
        assert run_worker(ws, device="cpu", text_metrics=False).done == 1
        (edit,) = applied_edits(ws.db, ws.history().id)
        assert (edit.method, edit.method_hparams) == ("time", job.method_hparams)
        new = replay(ws, reoptimize=True)
        (queued,) = list_jobs(ws.db, new.id)
        assert (queued.method, queued.method_hparams) == ("time", job.method_hparams)
