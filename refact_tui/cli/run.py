"""`refact run`: the worker, with a live progress bar per job (steps, loss, P(target))."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from refact_tui.services.display import markup_escape, plain
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
        from refact_tui.services.worker import JobFailed, JobFinished, JobStarted, SlotStep, WorkerNotice

        p = self.progress
        if self._batch_event(ev) or self._stats_event(ev):
            return
        if isinstance(ev, JobStarted):
            self.max_steps, self.slot = ev.max_steps, None
            self.label = markup_escape(f"job {ev.job_id} {short(ev.prompt, 28)} → {short(ev.target, 20)}")
            self.task = p.add_task(self.label, total=ev.max_steps, loss="-", p="-")
        elif isinstance(ev, SlotStep) and self.task is not None:
            if ev.slot != self.slot:  # a multi-slot edit: the bar follows the slot being optimised
                self.slot = ev.slot
                p.update(self.task, description=f"{self.label} [{markup_escape(ev.slot)}]", completed=0)
            p.update(self.task, completed=min(ev.event.step + 1, self.max_steps), loss=f"{ev.event.loss:.4f}",
                     p=f"{ev.event.p_target:.3f}")
        elif isinstance(ev, StepEvent) and self.task is not None and self.slot is None:
            p.update(self.task, completed=min(ev.step + 1, self.max_steps), loss=f"{ev.loss:.4f}",
                     p=f"{ev.p_target:.3f}")
        elif isinstance(ev, JobFinished) and self.task is not None:
            p.update(self.task, completed=self.max_steps, p=f"{ev.p_target:.3f}")
            p.console.print(f"[green]✓[/] job {ev.job_id} → edit {ev.seq}: P(target) {ev.p_target:.3f} after "
                            f"{ev.steps_run} steps ({ev.seconds:.1f} s)")
            self.task = None
        elif isinstance(ev, JobFailed):
            colour = "yellow" if ev.requeued else "red"
            p.console.print(f"[{colour}]✗[/] job {ev.job_id}: {markup_escape(ev.error)}", markup=True)
            if self.task is not None:
                p.remove_task(self.task)
            self.task = None
        elif isinstance(ev, WorkerNotice):
            p.console.print(plain(ev.message, style="dim"))


    def _stats_event(self, ev) -> bool:
        """A transient bar while an edited layer's second moment is collected; advice printed once."""
        from engine.events import Progress as StatsProgress

        if not isinstance(ev, StatsProgress):
            return False
        p = self.progress
        if ev.done == 0 and ev.detail:
            p.console.print(f"[yellow]![/] {markup_escape(ev.detail)}")
            return True
        if getattr(self, "stats_task", None) is None:
            self.stats_task = p.add_task(markup_escape(f"second moment, {ev.detail}"), total=ev.total, loss="-", p="-")
        p.update(self.stats_task, completed=ev.done, total=ev.total)
        if ev.done >= ev.total:
            p.remove_task(self.stats_task)
            self.stats_task = None
        return True

    def _batch_event(self, ev) -> bool:
        """One bar for a running batch: requests converged or finished out of N."""
        from refact_tui.services.batch_worker import BatchFinished, BatchStarted, BatchStep

        p = self.progress
        if isinstance(ev, BatchStarted):
            self.max_steps, self.batch_done, self.threshold = ev.max_steps, set(), ev.threshold
            label = f"batch of {len(ev.job_ids)} jobs ({ev.mode}, layer(s) {','.join(map(str, ev.layers))})"
            self.task = p.add_task(markup_escape(label), total=len(ev.job_ids), loss="-", p="-")
        elif isinstance(ev, BatchStep) and self.task is not None:
            if ev.event.p_target > self.threshold or ev.event.step + 1 >= self.max_steps:
                self.batch_done.add(ev.job_id)
            p.update(self.task, completed=len(self.batch_done), loss=f"{ev.event.loss:.4f}", p=f"{ev.event.p_target:.3f}")
        elif isinstance(ev, BatchFinished):
            mean = sum(ev.p_targets) / max(1, len(ev.p_targets))
            if self.task is not None:
                p.update(self.task, completed=len(ev.job_ids), p=f"{mean:.3f}")
            p.console.print(f"[green]✓[/] batch of {len(ev.job_ids)} jobs → edit {ev.seq}: mean P(target) {mean:.3f}, "
                            f"worst residual {max(ev.residuals, default=0.0):.2e} ({ev.seconds:.1f} s)")
            self.task = None
        else:
            return False
        return True


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
    if summary.stopped and not getattr(summary, "lease_lost", None):
        parts.append("stopped on request")
    console.print("; ".join(parts))


def run(
    ctx: typer.Context,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    max_jobs: int = typer.Option(None, "--max", min=1, help="Stop after this many jobs (at least 1)."),
    watch: bool = typer.Option(False, "--watch", help="Keep waiting for new jobs instead of exiting."),
    batch: int = typer.Option(None, "--batch", help="Edit up to N queued jobs of one history together as one edit."),
    insert: str = typer.Option("rank-one", "--insert", help="With --batch: rank-one | joint | spread."),
    layers: str = typer.Option(None, "--layers", help="With --insert spread: the layers, e.g. 5,6,7."),
    lam: float = typer.Option(None, "--lambda", help="With --batch joint/spread: ridge relative to mean diag(K^T C^-1 K)."),
    null_space: bool = typer.Option(False, "--null-space", help="With --batch: keep earlier edits' keys exactly."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Run queued edits (one worker per workspace; Ctrl-C stops between steps and requeues the job)."""
    from refact_tui.services.runner import run_worker, stop_on_signals

    settings = batch_settings(batch, insert, layers, lam, null_space)
    with open_workspace(ctx) as ws, stop_on_signals() as should_stop:
        with make_progress(disable=json_out) as progress:
            summary = run_worker(ws, device=device, max_jobs=max_jobs, on_event=JobProgress(progress),
                                 should_stop=should_stop, watch=watch, batch=settings)
    print_json(summary) if json_out else print_summary(summary)
    if getattr(summary, "lease_lost", None):
        from refact_tui.cli.common import print_error

        print_error(summary.lease_lost)
        raise typer.Exit(1)
    if summary.failed and not summary.done:
        raise typer.Exit(1)


def batch_settings(batch, insert, layers, lam, null_space):
    """BatchSettings from the `run` options (None: sequential, the default); one-line errors."""
    from engine.hparams import HParamsError
    from refact_tui.services.batch_worker import BatchSettings

    if batch is None:
        if insert != "rank-one" or layers or lam is not None or null_space:
            raise HParamsError("--insert, --layers, --lambda and --null-space need --batch N")
        return None
    try:
        parsed = tuple(int(x) for x in layers.split(",") if x.strip()) if layers else ()
    except ValueError:
        raise HParamsError(f"--layers {layers!r} is not a comma-separated list of layer numbers, e.g. 5,6,7") from None
    kw = {} if lam is None else {"lam": lam}
    settings = BatchSettings(size=batch, insert=insert, layers=parsed, null_space=null_space, **kw)
    settings.validate()
    return settings
