"""Metrics screen: one panel per metric, text and image space side by side."""

from __future__ import annotations

import sqlite_utils
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Footer, Header, Static

from refact_tui.services.dashboard import METRICS, MetricsView, metrics_view
from refact_tui.tui.keys import SCREEN_KEYS, bindings
from refact_tui.tui.screens.base import DashboardScreen
from refact_tui.tui.widgets.metric_panel import MetricPanel


def _status(view: MetricsView) -> Text:
    hist = view.history  # its name is in the header
    text = Text(f"head at edit {hist.head_seq if hist else 0}   ", style="bold")
    if view.running:
        runs = ", ".join(f"{r.space} run #{r.id}" for r in view.running)
        text.append(f"evaluating: {runs}", style="yellow")
    elif view.last_failed is not None:
        text.append(f"last {view.last_failed.space} evaluation failed: {view.last_failed.error or '?'}", style="red")
    else:
        text.append("t: text evaluation · i: image evaluation (latest edit) · T / I: every edit", style="dim")
    return text


class MetricsScreen(DashboardScreen):
    """Efficacy, generality, specificity, F1, retention and CLIP score of the current history."""

    TITLE = "refact-tui · Metrics"
    BINDINGS = bindings(SCREEN_KEYS["metrics"])

    def __init__(self) -> None:
        super().__init__(id="metrics-screen")
        self.view: MetricsView | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="metrics-status", classes="status-line")
        with Grid(id="metric-grid"):
            for name, label in METRICS:
                yield MetricPanel(name, label)
        yield Footer(show_command_palette=False, compact=True)

    def read(self, db: sqlite_utils.Database, now: float) -> MetricsView:
        return metrics_view(db)

    def draw(self, view: MetricsView) -> None:
        self.view = view
        self.query_one("#metrics-status", Static).update(_status(self.view))
        for panel_view in self.view.panels:
            self.query_one(f"#metric-{panel_view.name}", MetricPanel).show(panel_view)

    def action_evaluate(self, space: str, history: bool) -> None:
        self.refact.start_evaluation(space, history)
