"""SQLite schema of a workspace, as ordered migrations.

Design (after MLflow / W&B): a base model and its histories (ordered edit lines that can fork),
a job queue with leases, an append-only edit log, narrow append-only step and metric rows with a
latest-value view, artifacts on disk referenced by path + sha256, and an event log for the TUI.
Times are epoch seconds (REAL). JSON lives in TEXT columns and is validated by the app.
"""

from __future__ import annotations

import sqlite_utils

from store.errors import CorruptDatabaseError

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE base_models (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,               -- path or hub id as given
        path TEXT NOT NULL,                 -- resolved local folder
        kind TEXT NOT NULL,                 -- sd-pipeline | text-encoder
        encoder_family TEXT NOT NULL,       -- clip | bert
        encoder_hash TEXT NOT NULL,         -- sha256 of the text-encoder state dict
        config_json TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        UNIQUE (encoder_hash, path)
    ) STRICT;

    CREATE TABLE histories (
        id INTEGER PRIMARY KEY,
        base_model_id INTEGER NOT NULL REFERENCES base_models(id),
        name TEXT NOT NULL UNIQUE,
        parent_id INTEGER REFERENCES histories(id),
        forked_at_seq INTEGER,              -- parent's seq this history starts from
        head_seq INTEGER NOT NULL DEFAULT 0,-- 0 = base model, N = after edit seq N
        state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'archived')),
        note TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        history_id INTEGER NOT NULL REFERENCES histories(id),
        kind TEXT NOT NULL DEFAULT 'edit' CHECK (kind IN ('edit', 'eval')),
        position REAL NOT NULL,             -- queue order (ascending); REAL so moves need no renumbering
        request_json TEXT NOT NULL,
        hparams_json TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        attempts INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT,
        heartbeat_at REAL,
        error TEXT,
        edit_id INTEGER,                    -- the edit this job produced
        cancel_requested INTEGER NOT NULL DEFAULT 0,  -- set on a running job; the worker polls it
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    ) STRICT;
    CREATE INDEX jobs_state_position ON jobs (state, position);

    CREATE TABLE edits (
        id INTEGER PRIMARY KEY,
        history_id INTEGER NOT NULL REFERENCES histories(id),
        seq INTEGER NOT NULL,               -- 1-based position in the history
        job_id INTEGER REFERENCES jobs(id),
        source_edit_id INTEGER REFERENCES edits(id),  -- set when replayed from another edit
        request_json TEXT NOT NULL,
        hparams_json TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('applied', 'rolled_back', 'failed')),
        layer INTEGER NOT NULL,
        module TEXT NOT NULL,
        delta_path TEXT,                    -- relative to the workspace
        delta_sha256 TEXT,
        weights_hash TEXT,                  -- encoder hash right after this edit was applied
        steps_run INTEGER NOT NULL DEFAULT 0,
        early_stopped INTEGER NOT NULL DEFAULT 0,
        p_target REAL,
        delta_norm REAL,
        division_factor REAL,
        timings_json TEXT NOT NULL DEFAULT '{}',
        device TEXT NOT NULL DEFAULT 'cpu',
        error TEXT,
        created_at REAL NOT NULL,
        rolled_back_at REAL,
        UNIQUE (history_id, seq)
    ) STRICT;

    CREATE TABLE steps (
        edit_id INTEGER,                    -- NULL while the job runs; filled when the edit commits
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL DEFAULT 1,
        step INTEGER NOT NULL,
        -- NULL stands for NaN (SQLite stores NaN as NULL): a diverging step is still recorded
        loss REAL,
        nll REAL,
        wd REAL,
        p_target REAL,
        delta_norm REAL,
        elapsed REAL NOT NULL,
        PRIMARY KEY (job_id, attempt, step)
    ) STRICT;
    CREATE INDEX steps_edit ON steps (edit_id, step);

    CREATE TABLE eval_runs (
        id INTEGER PRIMARY KEY,
        history_id INTEGER NOT NULL REFERENCES histories(id),
        at_seq INTEGER NOT NULL,            -- model state = history at this head
        space TEXT NOT NULL CHECK (space IN ('text', 'image')),
        config_json TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
        error TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    ) STRICT;

    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        eval_run_id INTEGER REFERENCES eval_runs(id),
        edit_id INTEGER REFERENCES edits(id),   -- the edit measured (NULL = whole history)
        space TEXT NOT NULL,                -- text | image
        name TEXT NOT NULL,                 -- efficacy | generality | specificity | f1 | retention | clip_score ...
        value REAL NOT NULL,
        std REAL,
        n INTEGER NOT NULL DEFAULT 0,       -- items scored so far
        total INTEGER NOT NULL DEFAULT 0,   -- items expected (progress = n / total)
        final INTEGER NOT NULL DEFAULT 0,   -- 1 for the completed value
        created_at REAL NOT NULL
    ) STRICT;
    CREATE INDEX metrics_edit_name ON metrics (edit_id, name, id);
    CREATE INDEX metrics_run ON metrics (eval_run_id, id);

    -- latest value per (edit, space, name): what the panels show
    CREATE VIEW latest_metrics AS
        SELECT m.* FROM metrics m
        JOIN (SELECT MAX(id) AS id FROM metrics GROUP BY COALESCE(edit_id, -1), space, name) last
          ON m.id = last.id;

    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY,
        owner_kind TEXT NOT NULL,           -- edit | eval_run | history
        owner_id INTEGER NOT NULL,
        kind TEXT NOT NULL,                 -- delta | grid | image | export | manifest
        path TEXT NOT NULL,                 -- relative to the workspace
        sha256 TEXT,
        bytes INTEGER,
        meta_json TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        level TEXT NOT NULL DEFAULT 'info', -- debug | info | warning | error
        source TEXT NOT NULL,               -- worker | eval | cli | tui
        job_id INTEGER,
        message TEXT NOT NULL
    ) STRICT;

    CREATE TABLE leases (
        name TEXT PRIMARY KEY,              -- 'worker'
        holder TEXT NOT NULL,               -- host:pid:token
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    ) STRICT;
    """,
    # lease fencing + attempt accounting (issue 12): every lease takeover gets a new generation; a job
    # records the generation that claimed it and its phase; an edit records the generation that wrote
    # it; `crashes` counts only attempts that died while the job optimised or committed.
    """
    ALTER TABLE leases ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_generation INTEGER;
    ALTER TABLE jobs ADD COLUMN phase TEXT;
    ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE edits ADD COLUMN lease_generation INTEGER;
    """,
    # bench runs (issue 10): independent per-row edits of a request file scored in text, cross-attention
    # and image space; references = baseline / oracle scores shared by every run with the same key.
    """
    CREATE TABLE bench_runs (
        id INTEGER PRIMARY KEY,
        method TEXT NOT NULL,
        hparams_json TEXT NOT NULL,
        config_json TEXT NOT NULL,          -- everything needed to rerun it exactly
        corpus_path TEXT NOT NULL,
        corpus_sha256 TEXT NOT NULL,
        n_rows INTEGER NOT NULL,
        summary_json TEXT NOT NULL DEFAULT '{}',
        rerun_of INTEGER REFERENCES bench_runs(id),
        seconds REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE bench_rows (
        run_id INTEGER NOT NULL REFERENCES bench_runs(id),
        row_index INTEGER NOT NULL,
        request_json TEXT NOT NULL,
        metrics_json TEXT NOT NULL,         -- space -> metric -> value
        failed_json TEXT NOT NULL,          -- space -> failed probe labels
        scores_json TEXT NOT NULL,          -- space -> [P(source), P(target)] cells
        seconds REAL NOT NULL,
        weights_hash TEXT NOT NULL,         -- of the edited matrices before the row's edit
        PRIMARY KEY (run_id, row_index)
    ) STRICT;

    CREATE TABLE bench_references (
        key TEXT NOT NULL,
        space TEXT NOT NULL,
        variant TEXT NOT NULL,              -- baseline | oracle
        row_index INTEGER NOT NULL,
        scores_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (key, space, variant, row_index)
    ) STRICT;
    """,
    # batches (issue 9): one edit row of kind 'batch' holds N requests and one delta file; each request's
    # result (and its text metrics) is a batch_requests row; jobs claimed together share a batch_token.
    """
    ALTER TABLE edits ADD COLUMN kind TEXT NOT NULL DEFAULT 'edit';
    ALTER TABLE jobs ADD COLUMN batch_token TEXT;
    CREATE TABLE batch_requests (
        edit_id INTEGER NOT NULL REFERENCES edits(id),
        idx INTEGER NOT NULL,               -- 0-based position in the batch (= its delta columns)
        job_id INTEGER REFERENCES jobs(id),
        request_json TEXT NOT NULL,
        p_target REAL,
        steps_run INTEGER NOT NULL DEFAULT 0,
        early_stopped INTEGER NOT NULL DEFAULT 0,
        residual REAL,                      -- ||W'k_e - v*|| / ||v*|| after the batch's insertion
        metrics_json TEXT NOT NULL DEFAULT '{}',  -- text metrics of this request at the batch's head
        PRIMARY KEY (edit_id, idx)
    ) STRICT;
    CREATE INDEX jobs_batch_token ON jobs (batch_token);
    """,
    # edit slots (issue 8): the per-encoder-slot sub-edits of one edit (SDXL, SD3, FLUX edit several
    # text encoders with one request); SD1 edits have one row. weights_hash is that slot's encoder hash.
    """
    CREATE TABLE edit_slots (
        edit_id INTEGER NOT NULL REFERENCES edits(id),
        slot TEXT NOT NULL,                 -- pipeline attribute: text_encoder, text_encoder_2, ...
        idx INTEGER NOT NULL,               -- order in the model's slots
        layer INTEGER NOT NULL,
        module TEXT NOT NULL,
        readout TEXT NOT NULL DEFAULT '',
        p_target REAL,
        steps_run INTEGER NOT NULL DEFAULT 0,
        early_stopped INTEGER NOT NULL DEFAULT 0,
        division_factor REAL,
        delta_norm REAL,
        verify_error REAL,
        weights_hash TEXT,
        PRIMARY KEY (edit_id, slot)
    ) STRICT;
    """,
    # per-slot metrics and steps (issue 8): metrics.slot '' is the whole edit (for a multi-slot edit the
    # mean over its edited slots), a slot name is that encoder's own value. steps.slot names the encoder
    # slot whose v* optimisation a row records (every slot's steps are kept); the key gains the slot, so
    # the table is rebuilt. Rows written before held the first edited slot's steps only: they get that
    # slot's name from edit_slots (idx 0), else 'text_encoder' (the slot of every single-encoder model).
    """
    ALTER TABLE metrics ADD COLUMN slot TEXT NOT NULL DEFAULT '';
    DROP VIEW latest_metrics;
    CREATE VIEW latest_metrics AS
        SELECT m.* FROM metrics m
        JOIN (SELECT MAX(id) AS id FROM metrics GROUP BY COALESCE(edit_id, -1), space, name, slot) last
          ON m.id = last.id;

    CREATE TABLE steps_by_slot (
        edit_id INTEGER,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL DEFAULT 1,
        slot TEXT NOT NULL DEFAULT 'text_encoder',
        step INTEGER NOT NULL,
        loss REAL,
        nll REAL,
        wd REAL,
        p_target REAL,
        delta_norm REAL,
        elapsed REAL NOT NULL,
        PRIMARY KEY (job_id, attempt, slot, step)
    ) STRICT;
    INSERT INTO steps_by_slot (edit_id, job_id, attempt, slot, step, loss, nll, wd, p_target, delta_norm, elapsed)
        SELECT s.edit_id, s.job_id, s.attempt,
               COALESCE((SELECT es.slot FROM edit_slots es WHERE es.edit_id = s.edit_id AND es.idx = 0),
                        'text_encoder'),
               s.step, s.loss, s.nll, s.wd, s.p_target, s.delta_norm, s.elapsed
        FROM steps s;
    DROP TABLE steps;
    ALTER TABLE steps_by_slot RENAME TO steps;
    CREATE INDEX steps_edit ON steps (edit_id, slot, step);
    """,
    # method columns (issue 16): a job's and an edit's edit method and that method's own hyperparameters
    # (a JSON object; NULL for ReFACT, whose hyperparameters are hparams_json) were the "method" and
    # "method_hparams" (a JSON string) of the request's extra fields. They move out into columns; an
    # extra left empty is dropped, as EditRequest.to_dict writes it.
    """
    ALTER TABLE jobs ADD COLUMN method TEXT NOT NULL DEFAULT 'refact';
    ALTER TABLE jobs ADD COLUMN method_hparams_json TEXT;
    ALTER TABLE edits ADD COLUMN method TEXT NOT NULL DEFAULT 'refact';
    ALTER TABLE edits ADD COLUMN method_hparams_json TEXT;

    UPDATE jobs SET method = COALESCE(json_extract(request_json, '$.extra.method'), 'refact'),
        method_hparams_json = NULLIF(json_extract(request_json, '$.extra.method_hparams'), ''),
        request_json = json_remove(request_json, '$.extra.method', '$.extra.method_hparams')
    WHERE json_valid(request_json) AND json_type(request_json, '$.extra') = 'object'
      AND (json_type(request_json, '$.extra.method') IS NOT NULL
           OR json_type(request_json, '$.extra.method_hparams') IS NOT NULL);
    UPDATE jobs SET request_json = json_remove(request_json, '$.extra')
    WHERE json_valid(request_json) AND json_extract(request_json, '$.extra') = '{}';
    UPDATE edits SET method = COALESCE(json_extract(request_json, '$.extra.method'), 'refact'),
        method_hparams_json = NULLIF(json_extract(request_json, '$.extra.method_hparams'), ''),
        request_json = json_remove(request_json, '$.extra.method', '$.extra.method_hparams')
    WHERE json_valid(request_json) AND json_type(request_json, '$.extra') = 'object'
      AND (json_type(request_json, '$.extra.method') IS NOT NULL
           OR json_type(request_json, '$.extra.method_hparams') IS NOT NULL);
    UPDATE edits SET request_json = json_remove(request_json, '$.extra')
    WHERE json_valid(request_json) AND json_extract(request_json, '$.extra') = '{}';
    """,
    # load dtype (issue 18): the dtype a base model loads in by default (`refact init --dtype`; NULL: as its
    # files store it, as every workspace loaded before) and the sha256 of its stored text-encoder files,
    # the identity that vouches for the base when it loads in another dtype than its recorded hash's
    # (services/working_model.py). Older workspaces get the file hash at their next verified load.
    """
    ALTER TABLE base_models ADD COLUMN dtype TEXT CHECK (dtype IN ('float32', 'float16', 'bfloat16'));
    ALTER TABLE base_models ADD COLUMN files_hash TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    """The version recorded in ``meta`` (0 for an empty database)."""
    has_meta = db.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = db.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if not row:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise CorruptDatabaseError(f"schema_version is {row[0]!r}, not a number") from None
