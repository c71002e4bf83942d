"""`refact plan`: memory a model needs, from its configs and safetensors headers (nothing loaded)."""

from __future__ import annotations

from pathlib import Path

import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json, print_table


def register(app: typer.Typer) -> None:
    app.command("plan", rich_help_panel="Workspace")(plan)


def plan(
    ctx: typer.Context,
    model: Path = typer.Option(None, "--model", "-m", help="Model folder (default: the workspace's base model)."),
    dtype: str = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (default: the workspace's load "
                              "dtype, else as the files store it)."),
    batch: int = typer.Option(8, "--batch", help="Batch size N for the batch peak."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Per component parameters and bytes, C per slot and expected peaks, without loading weights."""
    from refact_tui.services.plan import plan_model
    from refact_tui.services.plan import size_text as _size

    if model is None:
        from refact_tui.services.working_model import load_dtype
        from store.base_models import get_base_model

        with open_workspace(ctx, read_only=True) as ws:
            base = get_base_model(ws.db, ws.history().base_model_id)
            model, dtype = Path(base.path), load_dtype(ws, base, dtype)
    p = plan_model(model, dtype, batch)
    if json_out:
        print_json(p)
        return
    print_table(f"{p.model} in {p.dtype}", ["component", "class", "parameters", "bytes", "stored"],
                [(c.name, c.class_name, f"{c.params:,}", _size(c.bytes), c.stored_dtype) for c in p.components])
    if p.slots:
        print_table("edit state per slot", ["slot", "layers", "width", "C (width² fp32)", "editable params"],
                    [(s.slot, s.layers, s.width, _size(s.c_bytes), f"{s.editable_params:,}") for s in p.slots])
    print_table("expected peak (weights + edit state)", ["activity", "host", "GPU"],
                [(k, _size(v), _size(p.device_peaks[k]) if k in p.device_peaks else "-") for k, v in p.peaks.items()])
    console.print(f"total weights {_size(p.total_bytes)}")
    if p.cpu_edit_seconds is not None:
        console.print(f"time per edit on a 2-core CPU: about {p.cpu_edit_seconds:,.0f} s "
                      "(BENCHMARKS.md; on a GPU run benchmarks/gpu_session.sh)")
