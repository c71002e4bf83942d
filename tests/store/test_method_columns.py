"""A job's and an edit's method and method hyperparameters are columns; the migration moves them out of
the request's extra fields, and a read-only open refuses the old schema until `refact migrate`."""

from __future__ import annotations

import json

import pytest

import store.db as store_db
from store.db import OutdatedSchemaError, open_db, schema_version, transaction
from store.edits import get_edit, record_edit
from store.integrity import check_database
from store.jobs import enqueue, get_job
from store.schema import MIGRATIONS, SCHEMA_VERSION

# the migration that added the method columns (found by content: never by a version number)
METHOD_AT = next(i for i, m in enumerate(MIGRATIONS) if "method_hparams_json" in m)
TIME_HP = {"lam": 0.1, "preserve": ["a photo"]}


def _request(extra: dict | None) -> str:
    d = {"prompt": "a cat", "source": "cat", "target": "dog", "subject": "cat"}
    if extra is not None:
        d["extra"] = extra
    return json.dumps(d)


def _old_database(path, monkeypatch):
    """A database just before the migration: a TIME job and edit tagged in extra, a ReFACT job with
    another extra key, and a plain ReFACT job and edit."""
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS[:METHOD_AT])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", METHOD_AT)
    db = open_db(path, create=True)
    time_extra = {"method": "time", "method_hparams": json.dumps(TIME_HP, sort_keys=True)}
    with transaction(db):
        db.execute("INSERT INTO base_models (id, source, path, kind, encoder_family, encoder_hash, created_at) "
                   "VALUES (1, 'm', '/m', 'sd-pipeline', 'clip', 'h', 0)")
        db.execute("INSERT INTO histories (id, base_model_id, name, head_seq, created_at) VALUES (1, 1, 'main', 2, 0)")
        for j, extra in ((1, time_extra), (2, {"source_row": "7"}), (3, None)):
            db.execute("INSERT INTO jobs (id, history_id, position, request_json, hparams_json, state, created_at) "
                       "VALUES (?, 1, ?, ?, '{}', 'queued', 0)", [j, j, _request(extra)])
        for e, extra in ((1, time_extra), (2, None)):
            db.execute("INSERT INTO edits (id, history_id, seq, job_id, request_json, hparams_json, status, layer, "
                       "module, created_at) VALUES (?, 1, ?, ?, ?, '{}', 'applied', 1, 'fc2', 0)",
                       [e, e, e, _request(extra)])
    db.close()
    monkeypatch.undo()


def test_migration_moves_method_and_hparams_out_of_extra(tmp_path, monkeypatch):
    path = tmp_path / "refact.db"
    _old_database(path, monkeypatch)
    assert METHOD_AT < SCHEMA_VERSION
    with pytest.raises(OutdatedSchemaError, match="refact migrate"):
        open_db(path, read_only=True)  # a read never migrates
    db = open_db(path)  # a writer migrates
    assert schema_version(db) == SCHEMA_VERSION
    assert check_database(db) == []
    time_job, other_job, plain_job = (get_job(db, j) for j in (1, 2, 3))
    assert (time_job.method, time_job.method_hparams) == ("time", TIME_HP)
    assert time_job.request.extra == {} and "extra" not in json.loads(
        db.execute("SELECT request_json FROM jobs WHERE id = 1").fetchone()[0])
    assert (other_job.method, other_job.method_hparams, other_job.request.extra) == ("refact", None, {"source_row": "7"})
    assert (plain_job.method, plain_job.method_hparams) == ("refact", None)
    assert plain_job.request == time_job.request  # the rest of the request is untouched
    time_edit, plain_edit = get_edit(db, 1), get_edit(db, 2)
    assert (time_edit.method, time_edit.method_hparams, time_edit.request.extra) == ("time", TIME_HP, {})
    assert (plain_edit.method, plain_edit.method_hparams) == ("refact", None)
    db.close()


def test_enqueue_and_record_edit_store_the_method(db, history, hparams, make_request):
    job = enqueue(db, history.id, make_request(1), hparams, method="uce", method_hparams={"lam": 0.5})
    assert (get_job(db, job.id).method, get_job(db, job.id).method_hparams) == ("uce", {"lam": 0.5})
    plain = enqueue(db, history.id, make_request(2), hparams)
    assert (plain.method, plain.method_hparams) == ("refact", None)
    edit = record_edit(
        db, history_id=history.id, job_id=job.id, request=job.request, hparams=hparams, status="applied", layer=1,
        module="unet", delta_path=None, delta_sha256=None, weights_hash=None, steps_run=0, early_stopped=False,
        p_target=None, delta_norm=None, division_factor=None, timings={}, device="cpu", method="uce",
        method_hparams={"lam": 0.5}, kind="batch", lease_generation=3,
    )
    again = get_edit(db, edit.id)
    assert (again.method, again.method_hparams, again.kind, again.lease_generation) == ("uce", {"lam": 0.5}, "batch", 3)
    assert check_database(db) == []


def test_method_hparams_that_are_not_an_object_make_the_database_invalid(db, history, hparams, make_request):
    job = enqueue(db, history.id, make_request(1), hparams, method="time", method_hparams={"lam": 0.5})
    with transaction(db):
        db.execute("UPDATE jobs SET method_hparams_json = '[1]' WHERE id = ?", [job.id])
    assert check_database(db, first_only=True) == [f"jobs row {job.id} has invalid JSON in method_hparams_json"]
