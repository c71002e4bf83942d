"""`refact plan`: memory a model needs, from its configs and safetensors headers (nothing loaded)."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json, print_table


def register(app: typer.Typer) -> None:
    app.command("plan", rich_help_panel="Workspace")(plan)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def plan(
    ctx: typer.Context,
    model: Path = typer.Option(None, "--model", "-m", help="Model folder (default: the workspace's base model)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    batch: int = typer.Option(8, "--batch", help="Batch size N for the batch peak."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Per component parameters and bytes, C per slot and expected peaks, without loading weights."""
    from refact_tui.services.plan import plan_model

    if model is None:
        from store.base_models import get_base_model

        with open_workspace(ctx, read_only=True) as ws:
            model = Path(get_base_model(ws.db, ws.history().base_model_id).path)
    p = plan_model(model, dtype, batch)
    if json_out:
        print_json(p)
        return
    print_table(f"{p.model} in {p.dtype}", ["component", "class", "parameters", "bytes", "stored"],
                [(c.name, c.class_name, f"{c.params:,}", _size(c.bytes), c.stored_dtype) for c in p.components])
    if p.slots:
        print_table("edit state per slot", ["slot", "layers", "width", "C (width² fp32)", "editable params"],
                    [(s.slot, s.layers, s.width, _size(s.c_bytes), f"{s.editable_params:,}") for s in p.slots])
    print_table("expected peak (weights + edit state)", ["activity", "memory"],
                [(k, _size(v)) for k, v in p.peaks.items()])
    console.print(f"total weights {_size(p.total_bytes)}")
