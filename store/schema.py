"""SQLite schema of a workspace, as ordered migrations.

Design (after MLflow / W&B): a base model and its histories (ordered edit lines that can fork),
a job queue with leases, an append-only edit log, narrow append-only step and metric rows with a
latest-value view, artifacts on disk referenced by path + sha256, and an event log for the TUI.
Times are epoch seconds (REAL). JSON lives in TEXT columns and is validated by the app.
"""

from __future__ import annotations

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
]

SCHEMA_VERSION = len(MIGRATIONS)
