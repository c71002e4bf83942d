"""`refact queue ...`: add, import, list, reorder, cancel, retry edit jobs."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import (
    JSON_OPTION, console, err_console, fmt_float, open_workspace, print_json, print_table, short, with_hparam_options,
)

queue_app = typer.Typer(help="The edit queue the worker (`refact run`) processes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue", rich_help_panel="Edits")


def _print_jobs(jobs, title: str = "queue") -> None:
    print_table(
        title,
        ["job", "state", "prompt", "source → target", "layer", "tries", "edit", "error"],
        [[j.id, j.state, short(j.request.prompt, 36), short(f"{j.request.source} → {j.request.target}", 36),
          j.hparams.layer, j.attempts, j.edit_id, short(j.error, 40)] for j in jobs],
    )


@queue_app.command("add")
@with_hparam_options
def add(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt whose meaning changes."),
    source: str = typer.Option(..., "--source", "-s", help="What the prompt means now."),
    target: str = typer.Option(..., "--target", "-t", help="What it should mean."),
    subject: str = typer.Option(None, "--subject", help="Part of the prompt whose last token is edited."),
    json_out: bool = JSON_OPTION,
    hparams: dict | None = None,  # filled in by with_hparam_options
) -> None:
    """Queue one edit on the current history."""
    from engine.request import EditRequest
    from refact_tui.services.queue import add_edit

    with open_workspace(ctx) as ws:
        job = add_edit(ws, EditRequest(prompt=prompt, source=source, target=target, subject=subject), hparams)
    if json_out:
        print_json(job)
    else:
        console.print(f"queued job {job.id}: {job.request.prompt!r}: {job.request.source!r} → {job.request.target!r}")


@queue_app.command("import")
@with_hparam_options
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="RoAD / TIMED CSV, JSONL or JSON file of edit requests."),
    format: str = typer.Option("auto", "--format", "-f", help="auto | road | timed | jsonl | json"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Queue the valid rows, report the rest."),
    json_out: bool = JSON_OPTION,
    hparams: dict | None = None,  # filled in by with_hparam_options
) -> None:
    """Queue every request of a file (nothing is queued if a row is invalid, unless --skip-invalid)."""
    from refact_tui.services.queue import import_requests

    with open_workspace(ctx) as ws:
        report = import_requests(ws, file, format=format, skip_invalid=skip_invalid, hparams=hparams)
    if json_out:
        print_json({"added": [j.id for j in report.added], "errors": [str(e) for e in report.errors],
                    "skipped_invalid": report.skipped_invalid, "duplicates": report.duplicates})
    else:
        for e in report.errors[:20]:
            err_console.print(f"[yellow]{e}[/]", markup=True, highlight=False)
        if len(report.errors) > 20:
            err_console.print(f"[yellow]... and {len(report.errors) - 20} more[/]")
        console.print(report.summary())
    if report.errors and not skip_invalid:
        from refact_tui.cli.common import print_error

        print_error(f"{file} has {len(report.errors)} invalid row(s); nothing was queued (fix them or pass --skip-invalid)")
        raise typer.Exit(1)


@queue_app.command("ls")
def ls(
    ctx: typer.Context,
    state: list[str] = typer.Option(None, "--state", help="Only these states (repeatable)."),
    all_histories: bool = typer.Option(False, "--all", help="Jobs of every history."),
    json_out: bool = JSON_OPTION,
) -> None:
    """List jobs in queue order."""
    from refact_tui.services.queue import list_queue

    with open_workspace(ctx) as ws:
        jobs = list_queue(ws, states=state or None, all_histories=all_histories)
    print_json(jobs) if json_out else _print_jobs(jobs)


@queue_app.command("rm")
def rm(ctx: typer.Context, job_id: int = typer.Argument(...), json_out: bool = JSON_OPTION) -> None:
    """Remove a queued, failed or cancelled job."""
    from refact_tui.services.queue import remove

    with open_workspace(ctx) as ws:
        job = remove(ws, job_id)
    print_json(job) if json_out else console.print(f"removed job {job.id}")


@queue_app.command("move")
def move(ctx: typer.Context, job_id: int = typer.Argument(...),
         index: int = typer.Argument(..., help="New 0-based position among the queued jobs."),
         json_out: bool = JSON_OPTION) -> None:
    """Move a queued job to another position."""
    from refact_tui.services.queue import move as move_job

    with open_workspace(ctx) as ws:
        job = move_job(ws, job_id, index)
    print_json(job) if json_out else console.print(f"moved job {job.id} to position {index}")


@queue_app.command("clear")
def clear(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Delete every queued job."""
    from refact_tui.services.queue import clear as clear_queue

    with open_workspace(ctx) as ws:
        n = clear_queue(ws)
    print_json({"removed": n}) if json_out else console.print(f"removed {n} queued job(s)")


@queue_app.command("cancel")
def cancel(ctx: typer.Context, job_id: int = typer.Argument(...), json_out: bool = JSON_OPTION) -> None:
    """Cancel a queued job (a running one stops at its next step)."""
    from refact_tui.services.queue import cancel as cancel_job

    with open_workspace(ctx) as ws:
        job = cancel_job(ws, job_id)
    if json_out:
        print_json(job)
    elif job.state == "running":
        console.print(f"job {job.id} will stop at its next optimization step")
    else:
        console.print(f"cancelled job {job.id}")


@queue_app.command("retry")
def retry(ctx: typer.Context, job_id: int = typer.Argument(...), json_out: bool = JSON_OPTION) -> None:
    """Queue a failed or cancelled job again."""
    from refact_tui.services.queue import retry as retry_job

    with open_workspace(ctx) as ws:
        job = retry_job(ws, job_id)
    print_json(job) if json_out else console.print(f"job {job.id} queued again")
