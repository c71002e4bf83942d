"""Human labels for where a history comes from (shared by the CLI and the TUI)."""

from __future__ import annotations

from typing import Protocol


class _Lineage(Protocol):
    parent_id: int | None
    forked_at_seq: int | None


def origin_label(history: _Lineage, parent_name: str | None) -> str:
    """'root', "fork of 'main' at edit 3", "fork of 'main' at the base model" or "replay of 'main'".

    A replay copies the parent's applied deltas, so it has a parent but no fork point; a re-optimize
    history starts from the base model (fork point 0) and re-queues the parent's requests.
    """
    if history.parent_id is None:
        return "root"
    parent = f"'{parent_name}'" if parent_name is not None else f"history {history.parent_id}"
    if history.forked_at_seq is None:
        return f"replay of {parent}"
    if history.forked_at_seq == 0:
        return f"fork of {parent} at the base model"
    return f"fork of {parent} at edit {history.forked_at_seq}"
