"""A batch's requests as a table: P(target) bar per request, converged ones marked."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from refact_tui.services.batch_view import BatchDetailView, BatchLiveView
from refact_tui.services.display import plain
from refact_tui.tui.widgets import fmt

BAR = 12


def p_bar(p: float | None, threshold: float | None = None) -> Text:
    """``█████░░░░░ 0.512`` (green once past the threshold)."""
    if p is None:
        return Text("-", style="dim")
    filled = max(0, min(BAR, round(p * BAR)))
    done = threshold is not None and p > threshold
    return Text("█" * filled + "░" * (BAR - filled) + f" {p:.3f}", style="green" if done else "")


def live_table(view: BatchLiveView) -> Table:
    t = Table(box=None, padding=(0, 1), show_edge=False, title_justify="left",
              title=f"batch {view.token}: {view.converged}/{len(view.rows)} converged")
    for col in ("", "job", "prompt → target", "P(target)", "step"):
        t.add_column(col)
    for r in view.rows:
        mark = "✓" if r.converged or r.state == "done" else ("·" if r.state == "running" else r.state[:1])
        t.add_row(Text(mark, style="green" if r.converged else ""), str(r.job_id),
                  plain(fmt.short(f"{r.prompt} → {r.target}", 40)),
                  p_bar(r.p_target, view.threshold), "-" if r.step is None else f"{r.step + 1}/{view.max_steps}")
    return t


def detail_table(view: BatchDetailView) -> Table:
    t = Table(box=None, padding=(0, 1), show_edge=False, title_justify="left",
              title=f"batch of {len(view.requests)} requests")
    for col in ("#", "job", "prompt → target", "P(target)", "steps", "residual", "efficacy"):
        t.add_column(col)
    for r in view.requests:
        t.add_row(str(r.idx + 1), str(r.job_id or "-"), plain(fmt.short(f"{r.request.prompt} → {r.request.target}", 40)),
                  p_bar(r.p_target), str(r.steps_run), fmt.num(r.residual), fmt.num(r.metrics.get("efficacy")))
    return t


class BatchTable(Static):
    """Hidden unless a batch is shown."""

    def on_mount(self) -> None:
        self.display = False

    def show_live(self, view: BatchLiveView | None) -> None:
        self.display = view is not None
        self.update(live_table(view) if view is not None else "")

    def show_detail(self, view: BatchDetailView | None) -> None:
        self.display = view is not None
        self.update(detail_table(view) if view is not None else "")
