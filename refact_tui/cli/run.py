"""`refact run`: the worker, with a live progress bar per job (steps, loss, P(target))."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json, short
from refact_tui.services.convergence import APPLIED, applied_label, count_line
from refact_tui.services.display import markup_escape, plain


def register(app: typer.Typer) -> None:
    app.command("run", rich_help_panel="Edits")(run)


class JobProgress:
    """Turns WorkerEvents into a rich progress display (one bar per job)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None
        self.max_steps = 0
        self.budget_used = 0  # applied edits that used their step budget below the threshold

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
            label = applied_label(ev.p_target, ev.steps_run, ev.early_stopped, ev.prob_threshold)
            mark = "[green]✓[/]" if label == APPLIED else "[yellow]![/]"
            self.budget_used += label != APPLIED
            p.console.print(f"{mark} {label} job {ev.job_id} → edit {ev.seq}: P(target) {ev.p_target:.3f} after "
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


def print_summary(summary, budget_used: int = 0) -> None:
    """The count line; ``budget_used`` of the ``done`` edits did not reach their threshold."""
    parts = [count_line(summary.done, budget_used, summary.failed)]
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
    dtype: str = typer.Option(None, "--dtype", help="Load the model in float32 | float16 | bfloat16 (default: "
                              "the workspace's, `refact init --dtype`); edit math stays float32."),
    max_jobs: int = typer.Option(None, "--max", help="Stop after this many jobs (at least 1; a batch's jobs "
                                 "count one by one)."),
    watch: bool = typer.Option(False, "--watch", help="Keep waiting for new jobs instead of exiting."),
    batch: int = typer.Option(None, "--batch", help="Edit up to N (1..4096) queued jobs of one history together as "
                              "one edit."),
    insert: str = typer.Option(None, "--insert", help="With --batch: joint (default: the best measured F1, "
                               "BENCHMARKS.md) | rank-one | spread | sequential (one request after another; "
                               "with --null-space each projected off the earlier ones' keys)."),
    layers: str = typer.Option(None, "--layers", help="With --insert spread: the layers, e.g. 5,6,7 (each must reach "
                               "the encoder's readout, as --layer must; see `refact layers`)."),
    lam: float = typer.Option(None, "--lambda", help="With --batch --insert joint/spread: ridge relative to mean "
                              "diag(K^T C^-1 K), 0..0.0399 (above it the batch guard accepts empty edits); "
                              "default 0.01."),
    null_space: bool = typer.Option(False, "--null-space", help="With --batch --insert joint/sequential/spread: keep "
                                    "earlier edits' keys exactly."),
    rounds: int = typer.Option(None, "--rounds", help="With --batch --insert joint/sequential: re-optimise v* on the "
                               "edited model and solve again, up to N rounds (1..10; default: the best measured)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Run queued edits (one worker per workspace; Ctrl-C stops between steps and requeues the job).

    Every option is checked before the first job is claimed: a bad one exits 2 with one line."""
    from engine.methods.refact.hparams import HParamsError
    from refact_tui.cli.common import print_error
    from refact_tui.services.runner import check_run_options, run_worker, stop_on_signals

    try:
        if max_jobs is not None and max_jobs < 1:
            raise HParamsError(f"--max must be at least 1, got {max_jobs}; it is the number of jobs to run")
        settings = batch_settings(batch, insert, layers, lam, null_space, rounds)
        with open_workspace(ctx) as ws:
            check_run_options(ws, device, settings, dtype)
    except HParamsError as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    with open_workspace(ctx) as ws, stop_on_signals() as should_stop:
        with make_progress(disable=json_out) as progress:
            job_progress = JobProgress(progress)
            summary = run_worker(ws, device=device, max_jobs=max_jobs, on_event=job_progress,
                                 should_stop=should_stop, watch=watch, batch=settings, dtype=dtype)
    print_json(summary) if json_out else print_summary(summary, job_progress.budget_used)
    if getattr(summary, "lease_lost", None):
        print_error(summary.lease_lost)
        raise typer.Exit(1)
    if summary.failed and not summary.done:
        raise typer.Exit(1)


def batch_settings(batch, insert, layers, lam, null_space, rounds=None):
    """BatchSettings from the `run` options (None: sequential, the default); one-line HParamsError."""
    from engine.methods.refact.hparams import HParamsError
    from refact_tui.services.worker_types import DEFAULT_INSERT, BatchSettings

    if batch is None:
        if insert is not None or layers is not None or lam is not None or null_space or rounds is not None:
            raise HParamsError("--insert, --layers, --lambda, --null-space and --rounds need --batch N")
        return None
    parsed: tuple[int, ...] = ()
    if layers is not None:
        try:
            parsed = tuple(int(x) for x in layers.split(","))
        except ValueError:
            raise HParamsError(f"--layers {layers!r} is not a comma-separated list of layer numbers, e.g. 5,6,7") from None
    settings = BatchSettings(size=batch, insert=insert or DEFAULT_INSERT, layers=parsed, null_space=null_space, lam=lam,
                             rounds=rounds)
    settings.validate()
    return settings
