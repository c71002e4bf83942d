"""`refact export` and `refact apply-deltas`."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json


def register(app: typer.Typer) -> None:
    app.command("export", rich_help_panel="History")(export)
    app.command("apply-deltas", rich_help_panel="History")(apply_deltas)
    app.command("import-adapter", rich_help_panel="History")(import_adapter)


def _report(res, json_out: bool) -> None:
    if json_out:
        print_json(res)
        return
    for note in res.notes:
        console.print(note, soft_wrap=True)
    if res.kind == "deltas":
        console.print(f"wrote {res.n_edits} delta(s) and {res.manifest} (base {res.base_encoder_hash[:12]})")
    elif res.kind in ("lora", "kohya", "peft"):
        console.print(f"wrote {res.n_edits} edit(s) as {res.kind} adapters (base {res.base_encoder_hash[:12]}) "
                      f"to [bold]{res.out}[/]; README.md says how to load them", soft_wrap=True)
    else:
        console.print(f"wrote the edited {res.kind} ({res.n_edits} edit(s), weights {res.weights_hash[:12]}) "
                      f"to [bold]{res.out}[/]")
        if len(res.weights_hashes) > 1:  # one line per encoder slot of SDXL / SD3 / FLUX
            for slot, digest in res.weights_hashes.items():
                console.print(f"  {slot}: {digest[:12]}")


def export(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="New folder to write."),
    fmt: str = typer.Option("merged", "--format", "-f",
                            help="merged (save_pretrained folder), deltas (delta files + manifest.json), "
                                 "lora (diffusers; PEFT folders for T5/LLM encoders), kohya (ComfyUI/A1111), peft."),
    deltas_only: bool = typer.Option(False, "--deltas-only", help="Same as --format deltas."),
    per_edit: bool = typer.Option(False, "--per-edit", help="One named adapter per edit (edit-<seq>), "
                                                               "instead of one stacked adapter."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Export the current model (save_pretrained folder), its deltas, or its edits as adapters."""
    from engine.errors import EngineError
    from engine.export.adapter import ExportFormat
    from refact_tui.services.export import export_history

    chosen = ExportFormat.parse(fmt)  # validated before the workspace is opened
    if deltas_only and chosen not in (ExportFormat.MERGED, ExportFormat.DELTAS):
        raise EngineError(f"--deltas-only contradicts --format {chosen.value}; pass one of them")
    if deltas_only:
        chosen = ExportFormat.DELTAS
    with open_workspace(ctx) as ws:
        res = export_history(ws, out, chosen, per_edit=per_edit)
    _report(res, json_out)


def apply_deltas(
    manifest: Path = typer.Argument(..., help="manifest.json written by `refact export --deltas-only`."),
    model: str = typer.Option(..., "--model", "-m", help="The base model the deltas were made for."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the edited model."),
    legacy: bool = typer.Option(False, "--legacy-manifest", help="Accept a refact-deltas/1 manifest: it records no "
                                "weights hash before each delta, so only the files' sha256 and the weights hashes "
                                "it records are checked."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Apply exported deltas to a base model (all hashes checked) and save the edited model."""
    from refact_tui.services.export import apply_deltas_manifest

    res = apply_deltas_manifest(manifest, model, out, legacy=legacy)
    _report(res, json_out)



def import_adapter(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Folder written by `refact export --format lora|kohya|peft`."),
    name: str = typer.Option(None, "--name", help="Name of the new history (default imported-N)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Read an exported adapter back as a new history (its base hash and every file are checked)."""
    from refact_tui.services.import_adapter import import_adapter as run_import

    with open_workspace(ctx) as ws:
        res = run_import(ws, path, name)
    if json_out:
        print_json(res)
    else:
        console.print(f"imported {res.n_edits} edit(s) as history [bold]{res.history}[/] "
                      f"(weights {res.weights_hash[:12]})")
