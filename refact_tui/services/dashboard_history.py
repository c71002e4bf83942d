"""The History screen's read-model: a history's edit log and the detail of one edit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from refact_tui.services.dashboard_snapshot import history_row, read_snapshot
from store.db import fetch_all, fetch_one
from store.records import ArtifactRow, EditRow, HistoryRow, MetricRow, StepRow


@dataclass(frozen=True)
class HistoryView:
    """The ordered edit log of a history (rolled-back and failed edits included)."""

    history: HistoryRow | None
    histories: tuple[HistoryRow, ...]
    edits: tuple[EditRow, ...]
    efficacy: dict[int, float] = field(default_factory=dict)  # edit id -> latest text efficacy

    def edit(self, edit_id: int) -> EditRow | None:
        return next((e for e in self.edits if e.id == edit_id), None)


def history_view(db: sqlite_utils.Database, *, history_id: int | None = None) -> HistoryView:
    """Every edit of the history in seq order, with the key figure of each."""
    with read_snapshot(db):
        history = history_row(db, history_id)
        histories = tuple(HistoryRow.from_row(r) for r in fetch_all(db, "SELECT * FROM histories ORDER BY id"))
        if history is None:
            return HistoryView(None, histories, ())
        edits = tuple(EditRow.from_row(r) for r in fetch_all(
            db, "SELECT * FROM edits WHERE history_id = ? ORDER BY seq", [history.id]))
        eff = fetch_all(
            db,
            "SELECT m.edit_id, m.value FROM latest_metrics m JOIN edits e ON e.id = m.edit_id "
            "WHERE e.history_id = ? AND m.space = 'text' AND m.name = 'efficacy' AND m.slot = ''",
            [history.id],
        )
    return HistoryView(history, histories, edits, {r["edit_id"]: r["value"] for r in eff})


@dataclass(frozen=True)
class EditDetailView:
    """Everything the detail pane shows about one edit."""

    edit: EditRow
    history: HistoryRow | None
    steps: tuple[StepRow, ...]
    metrics: tuple[MetricRow, ...]  # latest per (space, name): the whole edit's (slot '')
    artifacts: tuple[ArtifactRow, ...]
    grid_path: Path | None  # absolute path of the before/after grid PNG, if one was recorded
    slot_metrics: tuple[MetricRow, ...] = ()  # each encoder slot's latest values (multi-slot edits)

    @property
    def grid_relpath(self) -> str | None:
        art = next((a for a in reversed(self.artifacts) if a.kind == "grid"), None)
        return art.path if art else None


def edit_detail_view(db: sqlite_utils.Database, edit_id: int, *, root: Path) -> EditDetailView | None:
    """Detail of one edit; ``root`` resolves artifact paths (stored relative to the workspace)."""
    with read_snapshot(db):
        row = fetch_one(db, "SELECT * FROM edits WHERE id = ?", [edit_id])
        if row is None:
            return None
        edit = EditRow.from_row(row)
        history = history_row(db, edit.history_id)
        from store.steps import steps_for_edit

        steps = steps_for_edit(db, edit_id)  # the first slot's (the loss curve)
        metrics = fetch_all(db, "SELECT * FROM latest_metrics WHERE edit_id = ? AND slot = '' ORDER BY space, name",
                            [edit_id])
        per_slot = fetch_all(db, "SELECT * FROM latest_metrics WHERE edit_id = ? AND slot != '' "
                                 "ORDER BY slot, space, name", [edit_id])
        arts = fetch_all(
            db, "SELECT * FROM artifacts WHERE owner_kind = 'edit' AND owner_id = ? ORDER BY id", [edit_id])
    artifacts = tuple(ArtifactRow.from_row(a) for a in arts)
    grid = next((a for a in reversed(artifacts) if a.kind == "grid"), None)
    grid_path = None
    if grid is not None:
        p = Path(grid.path)
        grid_path = p if p.is_absolute() else Path(root) / p
    return EditDetailView(
        edit=edit, history=history, steps=tuple(steps),
        metrics=tuple(MetricRow.from_row(m) for m in metrics), artifacts=artifacts, grid_path=grid_path,
        slot_metrics=tuple(MetricRow.from_row(m) for m in per_slot),
    )
