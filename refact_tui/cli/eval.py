"""`refact eval [EDIT_ID|--history] ...`: a thin wrapper over refact_tui.services.evaluation."""

from __future__ import annotations

import typer

from refact_tui.cli.common import JSON_OPTION, console, fmt_float, open_workspace, print_json, print_table

IMG = "Image space"


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel="Evaluation")(evaluate)


def evaluate(
    ctx: typer.Context,
    edit_id: int = typer.Argument(None, help="Edit id to measure at the head (default: the head edit)."),
    history: bool = typer.Option(False, "--history", help="Every applied edit, re-scored at the head, + retention."),
    text_only: bool = typer.Option(False, "--text-only", help="Text-space metrics only (seconds, no images)."),
    seeds: int = typer.Option(None, "--seeds", help="Images per prompt (seeds 0..S-1; paper: 25).",
                              rich_help_panel=IMG),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (paper: 50).", rich_help_panel=IMG),
    size: int = typer.Option(None, "--size", help="Image side in pixels, a multiple of 8 (default: the pipeline's).",
                             rich_help_panel=IMG),
    judge: str = typer.Option(None, "--judge", help="open_clip judge MODEL:CHECKPOINT (MODEL may be a config JSON); "
                              "default ViT-bigG-14 from the local Hugging Face cache.", rich_help_panel=IMG),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also score the unedited model.",
                                  rich_help_panel=IMG),
    oracle: bool = typer.Option(False, "--oracle", help="Also score the unedited model prompted with the targets.",
                                rich_help_panel=IMG),
    grids: bool = typer.Option(True, "--grids/--no-grids", help="Save before/after grids of the edit prompt.",
                               rich_help_panel=IMG),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per generation batch.", rich_help_panel=IMG),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (accelerate picks per process)."),
    dtype: str = typer.Option(None, "--dtype", help="Load the model in float32 | float16 | bfloat16 (default: "
                              "the workspace's, `refact init --dtype`)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Measure edits at the head: text space, then images scored by a CLIP judge (not with --text-only)."""
    from refact_tui.services.evaluation import EvalOptions, is_main_process, run_evaluation
    from refact_tui.services.plan import EDIT, IMAGE_EVAL
    from refact_tui.services.preflight import preflight

    if history and edit_id is not None:
        raise typer.BadParameter("give an EDIT_ID or --history, not both", param_hint="EDIT_ID")
    options = EvalOptions(edit_id=edit_id, history=history, text_only=text_only,
                          image=_image_config(seeds, steps, size, judge, baseline, oracle, grids, batch_size, device))
    # Under accelerate only the main process draws progress and prints the results.
    show = is_main_process()
    progress, on_progress = progress_printer(disable=json_out or not show)
    with open_workspace(ctx) as ws:
        preflight(ws, EDIT if text_only else IMAGE_EVAL, device, dtype)  # before anything loads
        ws.dtype = dtype  # every load of this command (services.working_model.load_dtype)
        with progress:
            report = run_evaluation(ws, options, on_progress=on_progress)
    if not show:
        return
    if json_out:
        print_json(report)
        return
    print_report(report)


def print_report(report) -> None:
    """The results table of an EvalReport, then its grid paths and notes."""
    where = "whole history" if report.scope_edit_id is None else f"edit {report.scope_edit_id}"
    print_table(f"{where} at head {report.head_seq} of {report.history} ({len(report.edit_ids)} edit(s) evaluated)",
                ["metric", "text", "image", "std", "n"],
                [(m.name, fmt_float(m.text), fmt_float(m.image), fmt_float(m.std, 3), m.n) for m in report.lines])
    if report.per_slot:  # several encoder slots: each one's text values (the table above is their mean)
        slots = list(report.per_slot)
        names = [m.name for m in report.lines if any(m.name in v for v in report.per_slot.values())]
        print_table("text space per encoder slot", ["metric", *slots],
                    [(n, *(fmt_float(report.per_slot[s].get(n)) for s in slots)) for n in names])
    for edit_id, rows in report.per_request.items():  # a batch edit: the table above is the mean of these
        names = [m.name for m in report.lines if m.text is not None and all(m.name in r for r in rows)]
        print_table(f"edit {edit_id}: text space per request ({len(rows)} requests)", ["request", *names],
                    [(i, *(fmt_float(r[n]) for n in names)) for i, r in enumerate(rows, 1)])
    for path in report.grids:
        console.print(f"grid  {path}", markup=False)
    for note in report.notes:
        console.print(f"note  {note}", markup=False)


def _image_config(seeds, steps, size, judge, baseline, oracle, grids, batch_size, device):
    """ImageEvalConfig with the options given (paper defaults otherwise); bad values are usage errors."""
    from engine.evaluation.config import EvalConfigError, ImageEvalConfig

    try:
        base = ImageEvalConfig(judge=judge, baseline=baseline, oracle=oracle, grids=grids, device=device,
                               **({"seeds": seeds} if seeds is not None else {}))
        return base.with_generation(steps=steps, height=size, width=size, batch_size=batch_size)
    except EvalConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def progress_printer(disable: bool = False):
    """A rich Progress with one bar per progress task (images, text edits, each metric's items)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                        transient=True, disable=disable or not console.is_terminal)  # piped: no bars, no blank line
    tasks: dict[str, int] = {}

    def on_progress(p) -> None:
        if p.task not in tasks:
            tasks[p.task] = progress.add_task(p.task, total=p.total or None, detail="")
        progress.update(tasks[p.task], completed=p.done, total=p.total or None, detail=p.detail)

    return progress, on_progress
