"""`refact export` and `refact apply-deltas`."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json


def register(app: typer.Typer) -> None:
    app.command("export", rich_help_panel="History")(export)
    app.command("apply-deltas", rich_help_panel="History")(apply_deltas)


def _report(res, json_out: bool) -> None:
    if json_out:
        print_json(res)
    elif res.kind == "deltas":
        console.print(f"wrote {res.n_edits} delta(s) and {res.manifest} (base {res.base_encoder_hash[:12]})")
    else:
        console.print(f"wrote the edited {res.kind} ({res.n_edits} edit(s), weights {res.weights_hash[:12]}) "
                      f"to [bold]{res.out}[/]")
        if len(res.weights_hashes) > 1:  # one line per encoder slot of SDXL / SD3 / FLUX
            for slot, digest in res.weights_hashes.items():
                console.print(f"  {slot}: {digest[:12]}")


def export(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="New folder to write."),
    deltas_only: bool = typer.Option(False, "--deltas-only", help="Only the delta files + manifest.json."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Export the current model (save_pretrained folder) or its deltas."""
    from refact_tui.services.export import export_pipeline

    with open_workspace(ctx) as ws:
        res = export_pipeline(ws, out, deltas_only=deltas_only)
    _report(res, json_out)


def apply_deltas(
    manifest: Path = typer.Argument(..., help="manifest.json written by `refact export --deltas-only`."),
    model: str = typer.Option(..., "--model", "-m", help="The base model the deltas were made for."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the edited model."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Apply exported deltas to a base model (all hashes checked) and save the edited model."""
    from refact_tui.services.export import apply_deltas_manifest

    res = apply_deltas_manifest(manifest, model, out)
    _report(res, json_out)

