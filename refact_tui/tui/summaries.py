"""One-line notifications for the results of service calls."""

from __future__ import annotations

from typing import Any


def summarize(label: str, result: Any) -> str:
    """What a finished action did, in one line."""
    summary = getattr(result, "summary", None)
    if callable(summary):
        return f"{label}: {summary()}"
    kind = type(result).__name__
    if kind == "JobRow":
        return f"{label}: job #{result.id} is {result.state}"
    if kind == "HistoryRow":
        return f"{label}: history '{result.name}' is now current (head at edit {result.head_seq})"
    if kind == "RollbackResult":
        return (f"{label}: '{result.history.name}' moved from edit {result.from_seq} to {result.to_seq}; "
                f"{result.rolled_back} edit(s) rolled back")
    if kind == "ExportResult":
        return f"{label}: {result.n_edits} edit(s) exported to {result.out}"
    if kind == "WorkerSummary":
        stopped = ", stopped" if result.stopped else ""
        return f"{label}: {result.done} done, {result.failed} failed, {result.requeued} requeued{stopped}"
    if isinstance(result, int):
        return f"{label}: {result}"
    return f"{label}: done"
