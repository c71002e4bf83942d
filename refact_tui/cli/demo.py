"""`refact demo`: the whole loop on a tiny random pipeline, offline, in seconds."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import JSON_OPTION, console, print_json


def register(app: typer.Typer) -> None:
    app.command("demo", rich_help_panel="Workspace")(demo)


def demo(
    ctx: typer.Context,
    workspace: Path = typer.Option(None, "--workspace", "-w", help="New folder for the demo workspace "
                                   "(default: the global --workspace if given, else a temporary folder)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N sample edits."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Score the history in text and image space "
                                  "(tiny random judge, 2 seeds, 4 steps) after the edits."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Build a tiny pipeline, queue the sample edits, run them with live progress, evaluate, show the history."""
    from refact_tui.cli.eval import print_report, progress_printer
    from refact_tui.cli.history import print_edits
    from refact_tui.cli.run import JobProgress, make_progress, print_summary
    from refact_tui.services.demo import run_demo
    from refact_tui.services.runner import stop_on_signals

    root = workspace or (ctx.find_root().obj or {}).get("workspace")
    if not json_out:
        console.print("building a tiny random Stable Diffusion pipeline and a workspace (no downloads) ...")
    eval_progress, on_eval_progress = progress_printer(disable=json_out)
    with stop_on_signals() as should_stop, make_progress(disable=json_out) as progress, eval_progress:
        on_event = None if json_out else JobProgress(progress)
        result = run_demo(root, limit=limit, on_event=on_event, should_stop=should_stop,
                          evaluate=evaluate, on_eval_progress=on_eval_progress)
    if json_out:
        print_json({"workspace": result.root, "model": result.model_path, "seconds": result.seconds,
                    "summary": result.summary, "edits": result.edits, "evaluation": result.evaluation})
        return
    print_summary(result.summary)
    print_edits(result.edits, f"demo history ({result.seconds:.1f} s)")
    if result.evaluation is not None:
        print_report(result.evaluation)
    console.print(f"workspace: [bold]{result.root}[/]  (try `refact --workspace {result.root} show "
                  f"{result.edits[0].id if result.edits else 1}` or `refact --workspace {result.root} tui`)")
