"""Bench runs: one row per `refact bench` run, its per-row results, and the shared baseline/oracle
references. A run and all its rows are written in one transaction (nothing half-stored)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import sqlite_utils

from store.db import fetch_all, fetch_required, now, transaction
from store.records import dump_json


@dataclass(frozen=True)
class BenchRowRecord:
    """One bench row as stored (JSON columns decoded)."""

    run_id: int
    row_index: int
    request: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    failed: dict[str, list[str]]
    scores: dict[str, dict[str, list]]
    seconds: float
    weights_hash: str


@dataclass(frozen=True)
class BenchRunRecord:
    """One bench run as stored (JSON columns decoded)."""

    id: int
    method: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    corpus_path: str
    corpus_sha256: str
    n_rows: int
    summary: dict[str, Any]
    rerun_of: int | None
    seconds: float
    created_at: float

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "BenchRunRecord":
        return cls(r["id"], r["method"], json.loads(r["hparams_json"]), json.loads(r["config_json"]),
                   r["corpus_path"], r["corpus_sha256"], r["n_rows"], json.loads(r["summary_json"] or "{}"),
                   r["rerun_of"], float(r["seconds"]), float(r["created_at"]))


def insert_bench_run(db: sqlite_utils.Database, *, method: str, hparams: dict[str, Any], config: dict[str, Any],
                     corpus_path: str, corpus_sha256: str, summary: dict[str, Any], seconds: float,
                     rows: Sequence[dict[str, Any]], rerun_of: int | None = None) -> BenchRunRecord:
    """Store a finished run and its rows (dicts with the BenchRowRecord fields but run_id) atomically."""
    with transaction(db):
        cur = db.execute(
            "INSERT INTO bench_runs (method, hparams_json, config_json, corpus_path, corpus_sha256, n_rows, "
            "summary_json, rerun_of, seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [method, dump_json(hparams), dump_json(config), corpus_path, corpus_sha256, len(rows),
             dump_json(summary), rerun_of, float(seconds), now()],
        )
        run_id = cur.lastrowid
        for r in rows:
            db.execute(
                "INSERT INTO bench_rows (run_id, row_index, request_json, metrics_json, failed_json, scores_json, "
                "seconds, weights_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, int(r["row_index"]), dump_json(r["request"]), dump_json(r["metrics"]),
                 dump_json(r["failed"]), dump_json(r["scores"]), float(r["seconds"]), str(r["weights_hash"])],
            )
        return get_bench_run(db, run_id)


def get_bench_run(db: sqlite_utils.Database, run_id: int) -> BenchRunRecord:
    """A bench run by id (NotFoundError naming `refact bench ls` if none)."""
    row = fetch_required(db, "SELECT * FROM bench_runs WHERE id = ?", [int(run_id)],
                         f"no bench run {run_id}; see `refact bench ls`")
    return BenchRunRecord.from_row(row)


def list_bench_runs(db: sqlite_utils.Database) -> list[BenchRunRecord]:
    """All bench runs, newest first."""
    return [BenchRunRecord.from_row(r) for r in fetch_all(db, "SELECT * FROM bench_runs ORDER BY id DESC")]


def bench_rows(db: sqlite_utils.Database, run_id: int) -> list[BenchRowRecord]:
    """A run's rows in file order."""
    rows = fetch_all(db, "SELECT * FROM bench_rows WHERE run_id = ? ORDER BY row_index", [int(run_id)])
    return [BenchRowRecord(r["run_id"], r["row_index"], json.loads(r["request_json"]), json.loads(r["metrics_json"]),
                           json.loads(r["failed_json"]), json.loads(r["scores_json"]), float(r["seconds"]),
                           r["weights_hash"]) for r in rows]


def get_references(db: sqlite_utils.Database, key: str, space: str, variant: str) -> dict[int, dict[str, list]]:
    """Stored reference scores of (key, space, variant): row index -> scores."""
    rows = fetch_all(db, "SELECT row_index, scores_json FROM bench_references WHERE key = ? AND space = ? "
                     "AND variant = ?", [key, space, variant])
    return {int(r["row_index"]): json.loads(r["scores_json"]) for r in rows}


def put_references(db: sqlite_utils.Database, key: str, space: str, variant: str,
                   scores: dict[int, dict[str, list]]) -> None:
    """Store reference scores (first writer wins: an existing row is kept)."""
    with transaction(db):
        for idx, s in scores.items():
            db.execute("INSERT OR IGNORE INTO bench_references (key, space, variant, row_index, scores_json, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?)", [key, space, variant, int(idx), dump_json(s), now()])
