"""The per-slot migration (metrics.slot, steps.slot) keeps the rows of a database made before it."""

from __future__ import annotations

import store.db as store_db
from store.db import open_db, schema_version, transaction
from store.schema import MIGRATIONS, SCHEMA_VERSION

# the migration that added the slot columns (found by content: never by a version number)
SLOTS_AT = next(i for i, m in enumerate(MIGRATIONS) if "steps_by_slot" in m)


def _old_database(path, monkeypatch):
    """A database at the schema just before the per-slot migration, with an SDXL edit (two slots),
    an SD1-style edit without slot rows and a running job, their steps and metrics."""
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS[:SLOTS_AT])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", SLOTS_AT)
    db = open_db(path, create=True)
    ex = db.execute
    with transaction(db):
        ex("INSERT INTO base_models (id, source, path, kind, encoder_family, encoder_hash, created_at) "
           "VALUES (1, 'm', '/m', 'sd-pipeline', 'clip', 'h', 0)")
        ex("INSERT INTO histories (id, base_model_id, name, head_seq, created_at) VALUES (1, 1, 'main', 2, 0)")
        for j in (1, 2, 3):
            ex("INSERT INTO jobs (id, history_id, position, request_json, hparams_json, state, attempts, created_at) "
               "VALUES (?, 1, ?, '{}', '{}', ?, 1, 0)", [j, j, "running" if j == 3 else "done"])
        for e in (1, 2):
            ex("INSERT INTO edits (id, history_id, seq, job_id, request_json, hparams_json, status, layer, module, "
               "created_at) VALUES (?, 1, ?, ?, '{}', '{}', 'applied', 1, 'fc2', 0)", [e, e, e])
        ex("UPDATE jobs SET edit_id = id WHERE state = 'done'")
        # edit 1 edited text_encoder_2 only (its first slot); edit 2 has no slot rows
        ex("INSERT INTO edit_slots (edit_id, slot, idx, layer, module) VALUES (1, 'text_encoder_2', 0, 2, 'fc2')")
        for job, edit in ((1, 1), (2, 2), (3, None)):
            for step in range(3):
                ex("INSERT INTO steps (edit_id, job_id, attempt, step, loss, elapsed) VALUES (?, ?, 1, ?, ?, 0)",
                   [edit, job, step, 10.0 * job + step])
        ex("INSERT INTO eval_runs (id, history_id, at_seq, space, started_at) VALUES (1, 1, 2, 'text', 0)")
        for i, (edit, value) in enumerate(((1, 0.5), (1, 0.75), (2, 1.0))):
            ex("INSERT INTO metrics (eval_run_id, edit_id, space, name, value, n, total, final, created_at) "
               "VALUES (1, ?, 'text', 'efficacy', ?, 1, 1, 1, ?)", [edit, value, i])
    db.close()
    monkeypatch.undo()


def test_slot_migration_keeps_steps_and_metrics(tmp_path, monkeypatch):
    from store.metrics import latest_metrics, record_metric
    from store.steps import steps_for_edit, steps_for_job

    path = tmp_path / "refact.db"
    _old_database(path, monkeypatch)
    assert SLOTS_AT < SCHEMA_VERSION
    db = open_db(path)  # migrates
    assert schema_version(db) == SCHEMA_VERSION
    rows = db.execute("SELECT job_id, edit_id, slot, step, loss FROM steps ORDER BY job_id, step").fetchall()
    assert len(rows) == 9
    assert {(r[0], r[2]) for r in rows} == {(1, "text_encoder_2"), (2, "text_encoder"), (3, "text_encoder")}
    assert [r[4] for r in rows] == [10.0 * j + s for j in (1, 2, 3) for s in range(3)]
    assert [s.loss for s in steps_for_edit(db, 1)] == [10.0, 11.0, 12.0]
    assert [s.step for s in steps_for_job(db, 3)] == [0, 1, 2] and all(s.edit_id is None for s in steps_for_job(db, 3))
    # the primary key now includes the slot: another slot's step 0 of the same job is a new row
    db.execute("INSERT INTO steps (job_id, attempt, slot, step, elapsed) VALUES (1, 1, 'text_encoder', 0, 0)")
    assert db.execute("SELECT COUNT(*) FROM steps WHERE job_id = 1").fetchone()[0] == 4
    # metrics: every old row is a whole-edit row; the view still gives the newest per edit and name
    assert db.execute("SELECT COUNT(*) FROM metrics WHERE slot = ''").fetchone()[0] == 3
    assert [(m.edit_id, m.value, m.slot) for m in latest_metrics(db)] == [(1, 0.75, ""), (2, 1.0, "")]
    record_metric(db, eval_run_id=1, edit_id=2, space="text", name="efficacy", value=0.0, n=1, total=1, final=True,
                  slot="text_encoder")
    assert [m.value for m in latest_metrics(db, 2)] == [1.0]  # a slot row never hides the whole-edit one
    assert sorted((m.slot, m.value) for m in latest_metrics(db, 2, slot=None)) == [("", 1.0), ("text_encoder", 0.0)]
    db.close()
