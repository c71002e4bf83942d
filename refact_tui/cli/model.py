"""`refact model ...`: build tiny / full-shape random pipelines for offline work and tests."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import console

model_app = typer.Typer(help="Model folders.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model", rich_help_panel="Workspace")


@model_app.command("build")
def build(
    path: Path = typer.Argument(..., help="Folder to write the pipeline into."),
    size: str = typer.Option("tiny", "--size", help="tiny (seconds, tests and demos) | full (SD-v1 shapes)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Build a complete Stable Diffusion v1 folder with random weights (no download)."""
    from engine.builder import build_pipeline

    if size not in ("tiny", "full"):
        raise typer.BadParameter(f"--size must be tiny or full, not {size!r}")
    with console.status(f"building a {size} pipeline"):
        out = build_pipeline(path, size=size, seed=seed)
    console.print(f"built a {size} pipeline at [bold]{out}[/]")
