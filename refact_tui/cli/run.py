"""`refact run`: the worker, with a live progress bar per job (steps, loss, P(target))."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json, short


def register(app: typer.Typer) -> None:
    app.command("run", rich_help_panel="Edits")(run)


class JobProgress:
    """Turns WorkerEvents into a rich progress display (one bar per job)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None
        self.max_steps = 0

    def __call__(self, ev) -> None:
        from engine.events import StepEvent
        from refact_tui.services.worker import JobFailed, JobFinished, JobStarted, WorkerNotice

        p = self.progress
        if isinstance(ev, JobStarted):
            self.max_steps = ev.max_steps
            label = f"job {ev.job_id} {short(ev.prompt, 28)} → {short(ev.target, 20)}"
            self.task = p.add_task(label, total=ev.max_steps, loss="-", p="-")
        elif isinstance(ev, StepEvent) and self.task is not None:
            p.update(self.task, completed=min(ev.step + 1, self.max_steps), loss=f"{ev.loss:.4f}",
                     p=f"{ev.p_target:.3f}")
        elif isinstance(ev, JobFinished) and self.task is not None:
            p.update(self.task, completed=self.max_steps, p=f"{ev.p_target:.3f}")
            p.console.print(f"[green]✓[/] job {ev.job_id} → edit {ev.seq}: P(target) {ev.p_target:.3f} after "
                            f"{ev.steps_run} steps ({ev.seconds:.1f} s)")
            self.task = None
        elif isinstance(ev, JobFailed):
            colour = "yellow" if ev.requeued else "red"
            p.console.print(f"[{colour}]✗[/] job {ev.job_id}: {ev.error}", markup=True)
            if self.task is not None:
                p.remove_task(self.task)
            self.task = None
        elif isinstance(ev, WorkerNotice):
            p.console.print(f"[dim]{ev.message}[/]")


def make_progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("P(target) {task.fields[p]}"), TimeElapsedColumn(),
        console=console, disable=disable,
    )


def print_summary(summary) -> None:
    parts = [f"{summary.done} edit(s) applied", f"{summary.failed} failed"]
    if summary.requeued:
        parts.append(f"{summary.requeued} requeued")
    if summary.recovered_jobs:
        parts.append(f"recovered interrupted job(s) {summary.recovered_jobs}")
    if summary.stopped:
        parts.append("stopped on request")
    console.print("; ".join(parts))


def run(
    ctx: typer.Context,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    max_jobs: int = typer.Option(None, "--max", help="Stop after this many jobs."),
    watch: bool = typer.Option(False, "--watch", help="Keep waiting for new jobs instead of exiting."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Run queued edits (one worker per workspace; Ctrl-C stops between steps and requeues the job)."""
    from refact_tui.services.runner import run_worker, stop_on_signals

    with open_workspace(ctx) as ws, stop_on_signals() as should_stop:
        with make_progress(disable=json_out) as progress:
            summary = run_worker(ws, device=device, max_jobs=max_jobs, on_event=JobProgress(progress),
                                 should_stop=should_stop, watch=watch)
    print_json(summary) if json_out else print_summary(summary)
    if summary.failed and not summary.done:
        raise typer.Exit(1)
