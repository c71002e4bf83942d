"""The History screen's read-model: a history's edit log and the detail of one edit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from refact_tui.services.dashboard_snapshot import history_row, read_snapshot
from store.artifacts import list_artifacts
from store.histories import list_histories
from store.metrics import latest_metrics
from store.reads import find_edit, history_edits, latest_text_efficacy
from store.records import ArtifactRow, EditRow, HistoryRow, MetricRow, StepRow
from store.steps import steps_for_edit


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
        histories = tuple(list_histories(db))
        if history is None:
            return HistoryView(None, histories, ())
        return HistoryView(history, histories, history_edits(db, history.id), latest_text_efficacy(db, history.id))


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
        edit = find_edit(db, edit_id)
        if edit is None:
            return None
        history = history_row(db, edit.history_id)
        steps = steps_for_edit(db, edit_id)  # the first slot's (the loss curve)
        metrics = latest_metrics(db, edit_id)
        per_slot = [m for m in latest_metrics(db, edit_id, slot=None) if m.slot]
        artifacts = tuple(list_artifacts(db, "edit", edit_id))
    grid = next((a for a in reversed(artifacts) if a.kind == "grid"), None)
    grid_path = None
    if grid is not None:
        p = Path(grid.path)
        grid_path = p if p.is_absolute() else Path(root) / p
    return EditDetailView(
        edit=edit, history=history, steps=tuple(steps),
        metrics=tuple(metrics), artifacts=artifacts, grid_path=grid_path,
        slot_metrics=tuple(sorted(per_slot, key=lambda m: (m.slot, m.space, m.name))),
    )
