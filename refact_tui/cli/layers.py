"""`refact layers`: measure one request's edit at every editable layer of an encoder slot."""

from __future__ import annotations

import typer

from refact_tui.cli.common import (
    JSON_OPTION,
    console,
    fmt_float,
    open_workspace,
    print_json,
    print_table,
    with_hparam_options,
)
from refact_tui.services.display import markup_escape as esc


def register(app: typer.Typer) -> None:
    app.command("layers", rich_help_panel="Edits")(layers)


@with_hparam_options
def layers(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt whose meaning changes."),
    source: str = typer.Option(..., "--source", "-s", help="What the prompt means now."),
    target: str = typer.Option(..., "--target", "-t", help="What it should mean."),
    subject: str = typer.Option(None, "--subject", help="Part of the prompt whose last token is edited."),
    slot: list[str] = typer.Option([], "--slot", help="Encoder slot(s) to sweep (repeatable; default: every slot)."),
    positive: list[str] = typer.Option([], "--positive", help="A prompt that should change too (generality; "
                                       "repeatable; scored against --source / --target)."),
    negative: list[str] = typer.Option([], "--negative", help="A prompt that should not change (specificity; "
                                       "repeatable)."),
    only: str = typer.Option(None, "--only", help="Comma-separated layers instead of every editable one."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    json_out: bool = JSON_OPTION,
    hparams: dict | None = None,  # filled in by with_hparam_options
) -> None:
    """Edit one request at every editable layer of a slot on a scratch copy (the workspace's model at its
    head, in memory; nothing is recorded) and print efficacy, generality, specificity and drift per layer."""
    from engine.methods.refact.hparams import HParamsError
    from engine.request import EditRequest, Probe
    from refact_tui.services.layers import sweep_workspace

    try:
        chosen = tuple(int(x) for x in only.split(",") if x.strip()) if only else ()
    except ValueError:
        raise HParamsError(f"--only {only!r} is not a comma-separated list of layer numbers, e.g. 4,6,8") from None
    hp = dict(hparams or {})
    hp.pop("slots", None)
    hp.pop("slot_layers", None)
    request = EditRequest(prompt=prompt, source=source, target=target, subject=subject,
                          positives=tuple(Probe(p, source, target) for p in positive),
                          negatives=tuple(Probe(n, source, target) for n in negative))
    with open_workspace(ctx, read_only=True) as ws:
        with console.status("editing every layer", spinner="dots") if not json_out else _null():
            sweeps = sweep_workspace(ws, request, hp, slots=tuple(slot), layers=chosen, device=device)
    if json_out:
        print_json([{"slot": s.slot, "readout": s.readout, "best": s.best.layer if s.best else None,
                     "layers": s.rows} for s in sweeps])
        return
    for s in sweeps:
        print_table(f"{s.slot} ({s.readout} readout)",
                    ["layer", "P(target)", "efficacy", "generality", "specificity", "drift", "steps", "s", "note"],
                    [[r.layer, fmt_float(r.p_target, 3), fmt_float(r.efficacy, 3), fmt_float(r.generality, 3),
                      fmt_float(r.specificity, 3), fmt_float(r.drift, 3), r.steps_run, f"{r.seconds:.1f}",
                      r.error or ""] for r in s.rows])
        if s.best is not None:
            console.print(f"{esc(s.slot)}: best layer {s.best.layer} (efficacy {fmt_float(s.best.efficacy, 3)}, "
                          f"drift {fmt_float(s.best.drift, 3)}); queue with --layer {esc(s.slot)}={s.best.layer}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
