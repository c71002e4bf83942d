"""`refact eval ...`: thin wrappers over refact_tui.services.evaluation."""

from __future__ import annotations

import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json

eval_app = typer.Typer(help="Measure edits (text space: fast; image space: generates images).",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval", rich_help_panel="Evaluation")


def _print_result(result, json_out: bool) -> None:
    from refact_tui.cli.common import to_jsonable

    if json_out:
        print_json(result)
        return
    data = to_jsonable(result)
    if isinstance(data, dict):
        for k, v in data.items():
            console.print(f"{k}: {v}")
    else:
        console.print(data)


def _progress_printer(json_out: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                        transient=True, disable=json_out)
    tasks: dict[str, int] = {}

    def on_progress(p) -> None:
        if p.task not in tasks:
            tasks[p.task] = progress.add_task(p.task, total=p.total or None)
        progress.update(tasks[p.task], completed=p.done, total=p.total or None)

    return progress, on_progress


@eval_app.command("text")
def text(
    ctx: typer.Context,
    edit: int = typer.Option(None, "--edit", help="Edit id (default: the head edit)."),
    all_edits: bool = typer.Option(False, "--history", help="Every applied edit of the history (retention)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Text-space efficacy / generality / specificity with the model's own encoder."""
    from refact_tui.services.evaluation import run_text_eval

    progress, on_progress = _progress_printer(json_out)
    with open_workspace(ctx) as ws, progress:
        result = run_text_eval(ws, edit_id=edit, history=all_edits, on_progress=on_progress)
    _print_result(result, json_out)


@eval_app.command("image")
def image(
    ctx: typer.Context,
    edit: int = typer.Option(None, "--edit", help="Edit id (default: the head edit)."),
    all_edits: bool = typer.Option(False, "--history", help="Every applied edit of the history."),
    seeds: int = typer.Option(None, "--seeds", help="Images per prompt."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps."),
    size: int = typer.Option(None, "--size", help="Image side in pixels."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Generate images before/after and score them with the judge model."""
    import dataclasses

    from refact_tui.services import evaluation

    config_cls = getattr(evaluation, "ImageEvalConfig")
    names = {f.name for f in dataclasses.fields(config_cls)}
    wanted = {"seeds": seeds, "num_seeds": seeds, "steps": steps, "num_steps": steps, "size": size,
              "height": size, "width": size}
    config = config_cls(**{k: v for k, v in wanted.items() if v is not None and k in names})
    progress, on_progress = _progress_printer(json_out)
    with open_workspace(ctx) as ws, progress:
        result = evaluation.run_image_eval(ws, edit_id=edit, history=all_edits, config=config,
                                           on_progress=on_progress)
    _print_result(result, json_out)
