"""Base models a workspace edits (provenance: where the weights came from, their hash, the dtype they
load in by default and the hash of their stored files)."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from store.db import fetch_all, fetch_one, fetch_required, now, transaction
from store.records import BaseModelRow, dump_json


def register_base_model(
    db: sqlite_utils.Database,
    source: str,
    path: str,
    kind: str,
    encoder_family: str,
    encoder_hash: str,
    config: dict[str, Any],
    *,
    dtype: str | None = None,
    files_hash: str | None = None,
) -> BaseModelRow:
    """Insert a base model, or return the existing row with the same (encoder_hash, path)."""
    with transaction(db):
        existing = fetch_one(
            db, "SELECT * FROM base_models WHERE encoder_hash = ? AND path = ?", [encoder_hash, str(path)]
        )
        if existing:
            return BaseModelRow.from_row(existing)
        values = {"source": str(source), "path": str(path), "kind": kind, "encoder_family": encoder_family,
                  "encoder_hash": encoder_hash, "config_json": dump_json(config), "created_at": now()}
        # the load-dtype columns only when set (NULL is their default), so an older schema takes the row too
        values.update({k: v for k, v in (("dtype", dtype), ("files_hash", files_hash)) if v is not None})
        cur = db.execute(f"INSERT INTO base_models ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         list(values.values()))
        return get_base_model(db, cur.lastrowid)


def set_files_hash(db: sqlite_utils.Database, id: int, files_hash: str) -> None:
    """Record the stored-files hash of a base registered before it was kept (only where none is)."""
    with transaction(db):
        db.execute("UPDATE base_models SET files_hash = ? WHERE id = ? AND files_hash IS NULL", [files_hash, id])


def get_base_model(db: sqlite_utils.Database, id: int) -> BaseModelRow:
    """The base model with this id (NotFoundError if none)."""
    row = fetch_required(db, "SELECT * FROM base_models WHERE id = ?", [id], f"no base model with id {id}")
    return BaseModelRow.from_row(row)


def list_base_models(db: sqlite_utils.Database) -> list[BaseModelRow]:
    """All registered base models, oldest first."""
    return [BaseModelRow.from_row(r) for r in fetch_all(db, "SELECT * FROM base_models ORDER BY id")]
