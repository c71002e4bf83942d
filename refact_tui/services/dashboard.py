"""Read-model of the TUI: small frozen views built from short reads of the workspace database.

Every ``*_view`` function runs its queries inside one short read transaction (a consistent snapshot
that is released at once, so the worker's WAL checkpoints are never held up) and returns store
record dataclasses wrapped in view dataclasses. Nothing here writes, and nothing reads the wall
clock: callers pass ``now`` so that screens and snapshot tests stay deterministic.

One module per screen holds its view; this module gathers their public names:
``dashboard_snapshot`` (read transaction, current history, worker lease, events), ``dashboard_queue``,
``dashboard_live``, ``dashboard_metrics`` and ``dashboard_history`` (edit log and edit detail).
"""

from __future__ import annotations

from refact_tui.services.dashboard_history import EditDetailView, HistoryView, edit_detail_view, history_view
from refact_tui.services.dashboard_live import LiveView, live_view
from refact_tui.services.dashboard_metrics import METRICS, MetricPanelView, MetricsView, MetricValue, metrics_view
from refact_tui.services.dashboard_queue import QUEUE_STATES, QueueView, queue_view
from refact_tui.services.dashboard_snapshot import WORKER_STALE_S, WorkerInfo, read_snapshot, recent_events

__all__ = [
    "EditDetailView", "HistoryView", "LiveView", "METRICS", "MetricPanelView", "MetricValue", "MetricsView",
    "QUEUE_STATES", "QueueView", "WORKER_STALE_S", "WorkerInfo", "edit_detail_view", "history_view", "live_view",
    "metrics_view", "queue_view", "read_snapshot", "recent_events",
]
