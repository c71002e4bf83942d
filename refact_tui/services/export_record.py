"""Recording an export in the workspace without turning the export into a write.

An export is a read of the workspace: on a read-only (or busy) database it still succeeds, and only
the artifact row that would list it is left out.
"""

from __future__ import annotations

from store.artifacts import add_artifact
from store.db import StoreError


def record_export(db, owner_kind: str, owner_id: int, kind: str, path: str, **kw) -> bool:
    """add_artifact, or False (nothing written) when the database refuses the write."""
    try:
        add_artifact(db, owner_kind, owner_id, kind, path, **kw)
    except StoreError:
        return False
    return True
