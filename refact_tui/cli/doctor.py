"""`refact doctor`: check a workspace and clean up what crashed workers left behind; `refact migrate`:
upgrade a workspace made by an older refact-tui."""

from __future__ import annotations

import typer

from refact_tui.cli.common import JSON_OPTION, console, print_json, workspace_root
from refact_tui.services.display import plain


def register(app: typer.Typer) -> None:
    app.command("doctor", rich_help_panel="Workspace")(doctor)
    app.command("migrate", rich_help_panel="Workspace")(migrate)


def migrate(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Upgrade the workspace database to this refact-tui's schema (read commands never do it)."""
    from refact_tui.services.workspace import migrate_workspace

    res = migrate_workspace(workspace_root(ctx))
    if json_out:
        print_json({"root": res.root, "before": res.before, "after": res.after, "upgraded": res.upgraded})
    elif res.upgraded:
        console.print(plain(f"workspace {res.root} upgraded from schema {res.before} to {res.after}"))
    else:
        console.print(plain(f"workspace {res.root} is already at schema {res.after}; nothing to do"))


def doctor(
    ctx: typer.Context,
    clean: bool = typer.Option(False, "--clean", help="Remove delta files and step rows of attempts that never "
                                                      "committed (refused while a worker runs)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Check the workspace database and files; exit 1 when it is not usable."""
    from refact_tui.services.doctor import diagnose

    report = diagnose(workspace_root(ctx), clean=clean)
    if json_out:
        print_json({**{k: v for k, v in vars(report).items()}, "ok": report.ok})
    else:
        for f in report.findings:
            colour = "red" if f.level == "error" else "yellow"
            console.print(plain(f"{f.level}: {f.what}" + (f"; {f.fix}" if f.fix else ""), style=colour),
                          soft_wrap=True)
        if report.cleaned_deltas or report.cleaned_step_rows:
            console.print(f"removed {len(report.cleaned_deltas)} orphan delta file(s) and "
                          f"{report.cleaned_step_rows} stray step row(s)")
        if report.ok:
            console.print(plain(f"workspace {report.root} is healthy"
                                + (" (see the warnings above)" if report.findings else "")))
    if not report.ok:
        raise typer.Exit(1)
