"""Base models a workspace edits (provenance: where the weights came from and their hash)."""

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
) -> BaseModelRow:
    """Insert a base model, or return the existing row with the same (encoder_hash, path)."""
    with transaction(db):
        existing = fetch_one(
            db, "SELECT * FROM base_models WHERE encoder_hash = ? AND path = ?", [encoder_hash, str(path)]
        )
        if existing:
            return BaseModelRow.from_row(existing)
        cur = db.execute(
            "INSERT INTO base_models (source, path, kind, encoder_family, encoder_hash, config_json, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [str(source), str(path), kind, encoder_family, encoder_hash, dump_json(config), now()],
        )
        return get_base_model(db, cur.lastrowid)


def get_base_model(db: sqlite_utils.Database, id: int) -> BaseModelRow:
    """The base model with this id (NotFoundError if none)."""
    row = fetch_required(db, "SELECT * FROM base_models WHERE id = ?", [id], f"no base model with id {id}")
    return BaseModelRow.from_row(row)


def list_base_models(db: sqlite_utils.Database) -> list[BaseModelRow]:
    """All registered base models, oldest first."""
    return [BaseModelRow.from_row(r) for r in fetch_all(db, "SELECT * FROM base_models ORDER BY id")]
