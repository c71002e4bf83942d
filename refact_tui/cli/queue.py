"""`refact queue ...`: add, import, list, reorder, cancel, retry edit jobs."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import (
    JSON_OPTION,
    console,
    err_console,
    open_workspace,
    print_json,
    print_table,
    short,
    with_hparam_options,
)
from refact_tui.services.display import plain, quoted

queue_app = typer.Typer(help="The edit queue the worker (`refact run`) processes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue", rich_help_panel="Edits")


def _print_jobs(jobs, title: str = "queue") -> None:
    columns = ["job", "state", "prompt", "source → target", "layer", "tries", "edit", "error"]
    rows = [[j.id, j.state, short(j.request.prompt, 36), short(f"{j.request.source} → {j.request.target}", 36),
             j.hparams.layer, j.attempts, j.edit_id, short(j.error, 40)] for j in jobs]
    if any(getattr(j, "batch_token", None) for j in jobs):  # jobs run together by `run --batch` share a token
        columns.append("batch")
        for row, j in zip(rows, jobs):
            row.append(getattr(j, "batch_token", None))
    print_table(title, columns, rows)


@queue_app.command("add")
@with_hparam_options
def add(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt whose meaning changes."),
    source: str = typer.Option(..., "--source", "-s", help="What the prompt means now."),
    target: str = typer.Option(..., "--target", "-t", help="What it should mean."),
    subject: str = typer.Option(None, "--subject", help="Part of the prompt whose last token is edited "
                                "(default: the prompt without trailing punctuation)."),
    allow_duplicate: bool = typer.Option(False, "--allow-duplicate",
                                         help="Queue it even if the same request is queued or applied."),
    method: str = typer.Option("refact", "--method", help="Edit method: refact (text encoder), time or uce "
                               "(UNet cross-attention, closed form)."),
    method_hp: list[str] = typer.Option([], "--hp", help="TIME/UCE hyperparameter KEY=VALUE (repeatable), "
                                        "e.g. lam=0.1, with_to_k=true."),
    json_out: bool = JSON_OPTION,
    hparams: dict | None = None,  # filled in by with_hparam_options
) -> None:
    """Queue one edit on the current history."""
    from engine.request import EditRequest
    from refact_tui.cli.bench import _parse_hp
    from refact_tui.services.methods import with_method
    from refact_tui.services.queue import add_edit

    request = EditRequest(prompt=prompt, source=source, target=target, subject=subject)
    if (method or "").strip().lower() != "refact" or method_hp:  # a plain ReFACT request needs no tagging, and
        request = with_method(request, method, _parse_hp(method_hp))  # resolving a method imports torch
    with open_workspace(ctx) as ws:
        job = add_edit(ws, request, hparams, allow_duplicate=allow_duplicate)
    if json_out:
        print_json(job)
    else:
        r = job.request
        console.print(plain(f"queued job {job.id}: {quoted(r.prompt)}: {quoted(r.source)} → {quoted(r.target)}"))


@queue_app.command("import")
@with_hparam_options
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="RoAD / TIMED CSV, JSONL or JSON file of edit requests."),
    format: str = typer.Option("auto", "--format", "-f", help="auto | road | timed | iceb | jsonl | json"),
    negatives: Path = typer.Option(None, "--negatives", help="ICEB: class-prompt file (modify_imgnet_prompts.csv) "
                                   "the specificity probes are drawn from."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Queue the valid rows, report the rest."),
    allow_duplicate: bool = typer.Option(False, "--allow-duplicate",
                                         help="Also queue requests already queued or applied."),
    encoding_errors: str = typer.Option("strict", "--encoding-errors",
                                        help="strict (refuse invalid UTF-8) | replace (read bad bytes as U+FFFD)."),
    method: str = typer.Option(None, "--method", help="Queue every row with this edit method: refact, time or uce "
                               "(default: refact, or the method a row's extra names)."),
    method_hp: list[str] = typer.Option([], "--hp", help="TIME/UCE hyperparameter KEY=VALUE (repeatable), "
                                        "e.g. lam=0.1, with_to_k=true."),
    json_out: bool = JSON_OPTION,
    hparams: dict | None = None,  # filled in by with_hparam_options
) -> None:
    """Queue every request of a file (nothing is queued if a row is invalid, unless --skip-invalid)."""
    from refact_tui.cli.bench import _parse_hp
    from refact_tui.services.queue import import_requests

    method_hparams = _parse_hp(method_hp)
    with open_workspace(ctx) as ws:
        report = import_requests(ws, file, format=format, skip_invalid=skip_invalid, hparams=hparams,
                                 allow_duplicates=allow_duplicate, encoding_errors=encoding_errors,
                                 method=method, method_hparams=method_hparams or None, negatives=negatives)
    if json_out:
        print_json({"added": [j.id for j in report.added], "errors": [str(e) for e in report.errors],
                    "skipped_invalid": report.skipped_invalid, "duplicates": report.duplicates})
    else:
        for e in report.errors[:20]:
            err_console.print(plain(e, style="yellow"), highlight=False)
        if len(report.errors) > 20:
            err_console.print(f"[yellow]... and {len(report.errors) - 20} more[/]")
        console.print(plain(report.summary()))
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

    with open_workspace(ctx, read_only=True) as ws:
        jobs = list_queue(ws, states=state or None, all_histories=all_histories)
    if json_out:
        print_json(jobs)
        return
    _print_jobs(jobs)
    for j in jobs:  # the table shortens errors: say in full why each job failed and how to requeue it
        if j.state == "failed":
            hint = "" if "queue retry" in (j.error or "") else f"; `refact queue retry {j.id}` requeues it"
            console.print(plain(f"job {j.id} failed: {j.error or 'no reason recorded'}{hint}"), soft_wrap=True)


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
def retry(
    ctx: typer.Context,
    job_ids: list[int] = typer.Argument(None, help="Failed or cancelled jobs to queue again."),
    all_failed: bool = typer.Option(False, "--all-failed", help="Every failed job."),
    reason: str = typer.Option(None, "--reason", help="Only failed jobs whose error contains this text "
                               "(case-insensitive; implies --all-failed without ids)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Queue failed or cancelled jobs again (all of them or none)."""
    from refact_tui.services.queue import retry_many

    with open_workspace(ctx) as ws:
        jobs = retry_many(ws, list(job_ids or []), all_failed=all_failed, reason=reason)
    if json_out:
        print_json(jobs)
    else:
        ids = ", ".join(str(j.id) for j in jobs)
        console.print(f"job {ids} queued again" if len(jobs) == 1 else f"jobs {ids} queued again")
