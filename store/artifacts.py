"""Artifacts: files on disk (deltas, grids, images, exports) referenced by path + sha256."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from store.db import StoreError, fetch_all, now, transaction
from store.records import ArtifactRow, dump_json

OWNER_KINDS = ("edit", "eval_run", "history", "job")


def add_artifact(
    db: sqlite_utils.Database,
    owner_kind: str,
    owner_id: int,
    kind: str,
    path: str,
    sha256: str | None = None,
    bytes: int | None = None,
    meta: dict[str, Any] | None = None,
) -> ArtifactRow:
    """Record a file (path relative to the workspace) that belongs to an edit, eval run, ..."""
    if owner_kind not in OWNER_KINDS:
        raise StoreError(f"artifact owner must be one of {OWNER_KINDS}, got {owner_kind!r}")
    with transaction(db):
        cur = db.execute(
            "INSERT INTO artifacts (owner_kind, owner_id, kind, path, sha256, bytes, meta_json, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [owner_kind, owner_id, kind, str(path), sha256, bytes, dump_json(meta or {}), now()],
        )
        rows = fetch_all(db, "SELECT * FROM artifacts WHERE id = ?", [cur.lastrowid])
    return ArtifactRow.from_row(rows[0])


def list_artifacts(db: sqlite_utils.Database, owner_kind: str, owner_id: int) -> list[ArtifactRow]:
    """The artifacts of one owner, oldest first."""
    rows = fetch_all(
        db, "SELECT * FROM artifacts WHERE owner_kind = ? AND owner_id = ? ORDER BY id", [owner_kind, owner_id]
    )
    return [ArtifactRow.from_row(r) for r in rows]
