"""`refact stats ...`: second-moment statistics (C) per layer."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json, print_listing

stats_app = typer.Typer(help="Covariance statistics the edits need.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(stats_app, name="stats", rich_help_panel="Workspace")


@stats_app.command("compute")
def compute(
    ctx: typer.Context,
    layer: int = typer.Option(None, "--layer", help="Layer (default: those of queued jobs)."),
    corpus: Path = typer.Option(None, "--corpus", help="Text file, one caption per line (default: shipped)."),
    samples: int = typer.Option(None, "--samples", help="Use this many corpus lines (default: all)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    slot: str = typer.Option(None, "--slot", help="Encoder slot (default: the first; e.g. text_encoder_2)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Compute C (cached in the workspace's stats/); later edits use the same corpus and sample count."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from refact_tui.services.stats import compute_stats

    with open_workspace(ctx) as ws:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=json_out) as bar:
            tasks: dict[str, int] = {}

            def on_progress(p) -> None:
                if p.done == 0 and p.detail:  # the memory figure of C, or GPU advice: one line each
                    if not json_out:
                        console.print(p.detail, markup=False, highlight=False)
                    return
                if p.task not in tasks:
                    tasks[p.task] = bar.add_task(p.task, total=p.total or None)
                bar.update(tasks[p.task], completed=p.done, total=p.total or None)

            entries = compute_stats(ws, layer=layer, corpus=corpus, samples=samples, on_progress=on_progress,
                                    device=device, slot=slot)
    if json_out:
        print_json(entries)
        return
    for e in entries:
        console.print(f"layer {e.layer}: C from {e.n_tokens} tokens ({e.n_samples} lines) at {e.path}")


@stats_app.command("ls")
def ls(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """List cached statistics."""
    from refact_tui.services.stats import list_stats

    with open_workspace(ctx, read_only=True) as ws:
        entries = list_stats(ws)
    print_listing(entries, json_out, "statistics",
                  ["slot", "layer", "module", "lines", "tokens", "corpus", "upstream", "size"],
                  lambda e: [getattr(e, "slot", "text_encoder"), e.layer, e.module, e.n_samples, e.n_tokens,
                             Path(e.corpus).name, e.upstream_hash[:12], f"{e.size_bytes / 1024:.0f} KiB"])
