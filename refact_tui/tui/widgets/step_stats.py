"""The numbers of the live edit: step counter, loss, P(target), ||delta||, elapsed and ETA."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from refact_tui.services.dashboard import LiveView
from refact_tui.services.display import plain
from refact_tui.tui.widgets import fmt


def live_table(view: LiveView) -> Table | Text:
    """A two-column table of the live figures (or a hint when nothing has run yet)."""
    if view.job is None:
        return Text("No edit has run yet. Queue one (screen 1, key a) and start the worker (w).", style="dim")
    job, last = view.job, view.last
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True, min_width=9)
    t.add_column(no_wrap=True, overflow="ellipsis")
    state = Text(job.state, style="bold green" if view.running else "")
    if not view.running and job.state == "done" and last is not None and view.threshold is not None:
        if last.p_target >= view.threshold:
            state.append("  early stop", style="dim")
        else:  # applied, but the optimization ran out of steps below its threshold
            state.append(f"  applied, budget used, P {last.p_target:.2f} < {view.threshold:g}", style="yellow")
    t.add_row("job", Text(f"#{job.id} (attempt {view.attempt})  ").append(state))
    t.add_row("edit", plain(f"{job.request.prompt}: {fmt.change(job.request)}"))
    if last is not None:
        step = f"{last.step + 1} / {view.max_steps}"
    else:  # the worker loads the model and computes C and k* before the first step
        step = Text("- (preparing: model, statistics, k*)" if view.running else "-", style="dim")
    t.add_row("step", step)
    if len(view.slots) > 1:  # a multi-encoder edit: each slot's progress (optimised one after another)
        line = Text()
        for r in view.slots:
            line.append(f"{r.slot} ", style="bold" if r.slot == view.slot else "dim")
            line.append(f"{r.step + 1} P {fmt.num(r.p_target)}  ")
        t.add_row("slots", line)
    figures = Text()
    for label, value in (("loss", last.loss if last else None), ("P(target)", last.p_target if last else None),
                         ("||delta||", last.delta_norm if last else None)):
        figures.append(f"{label} ", style="bold").append(f"{fmt.num(value)}   ")
    t.add_row("now", figures)
    timing = Text(f"{fmt.duration(view.opt_elapsed)} optimizing, {fmt.duration(view.wall_elapsed)} in all   ")
    timing.append("ETA ", style="bold").append(fmt.duration(view.eta) if view.running else "-")
    t.add_row("elapsed", timing)
    if job.error:
        t.add_row("error", plain(job.error, style="red"))
    return t


class StepStats(Static):
    """Live figures of the edit being optimized."""

    def show(self, view: LiveView) -> None:
        self.update(live_table(view))
