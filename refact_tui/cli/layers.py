"""`refact layers`: measure one request's edit at every editable layer of one encoder slot, several, or
every slot (`--all-slots`), ranked across the slots swept."""

from __future__ import annotations

from dataclasses import asdict

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
    slot: list[str] = typer.Option([], "--slot", hidden=True, help="One encoder slot to sweep (repeatable; "
                                   "the same as --slots)."),
    all_slots: bool = typer.Option(False, "--all-slots", help="Sweep every encoder slot (the default) and rank "
                                   "their layers together: which encoder and layer carry the concept best."),
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
    head, in memory; nothing is recorded) and print efficacy, generality, specificity and drift per layer.
    Every slot by default (--all-slots says so explicitly), ranked together; --slots a,b sweeps a subset."""
    from engine.methods.refact.hparams import HParamsError
    from engine.request import EditRequest, Probe
    from refact_tui.services.layers import sweep_workspace

    try:
        chosen = tuple(int(x) for x in only.split(",") if x.strip()) if only else ()
    except ValueError:
        raise HParamsError(f"--only {only!r} is not a comma-separated list of layer numbers, e.g. 4,6,8") from None
    hp = dict(hparams or {})
    slots = tuple(dict.fromkeys([*hp.pop("slots", ()), *slot]))  # --slots a,b and the older --slot a
    hp.pop("slot_layers", None)
    request = EditRequest(prompt=prompt, source=source, target=target, subject=subject,
                          positives=tuple(Probe(p, source, target) for p in positive),
                          negatives=tuple(Probe(n, source, target) for n in negative))
    with open_workspace(ctx, read_only=True) as ws:
        with console.status("editing every layer", spinner="dots") if not json_out else _null():
            sweep = sweep_workspace(ws, request, hp, slots=slots, all_slots=all_slots, layers=chosen, device=device)
    best = sweep.best
    if json_out:
        print_json({"best": {"slot": best.slot, "layer": best.layer} if best else None,
                    "slots": [{"slot": s.name, "readout": s.readout,
                               "best": b.layer if (b := sweep.best_of(s.name)) else None} for s in sweep.slots],
                    "rows": [{**asdict(r), "rank": sweep.rank_of(r)} for r in sweep.rows]})
        return
    readouts = ", ".join(f"{s.name}: {s.readout}" for s in sweep.slots)
    print_table(f"layers ranked across {len(sweep.slots)} slot(s) ({readouts} readout)",
                ["slot", "layer", "rank", "P(target)", "efficacy", "generality", "specificity", "drift", "steps", "s",
                 "note"],
                [[r.slot, r.layer, sweep.rank_of(r) or "", fmt_float(r.p_target, 3), fmt_float(r.efficacy, 3),
                  fmt_float(r.generality, 3), fmt_float(r.specificity, 3), fmt_float(r.drift, 3), r.steps_run,
                  f"{r.seconds:.1f}", r.error or ""] for r in sweep.rows])
    if len(sweep.slots) > 1:
        for s in sweep.slots:
            if (b := sweep.best_of(s.name)) is not None:
                console.print(f"{esc(s.name)}: best layer {b.layer} (efficacy {fmt_float(b.efficacy, 3)}, "
                              f"drift {fmt_float(b.drift, 3)})")
    if best is not None:
        only_slot = f"--slots {esc(best.slot)} " if len(sweep.slots) > 1 else ""
        console.print(f"best: {esc(best.slot)} layer {best.layer} (efficacy {fmt_float(best.efficacy, 3)}, "
                      f"drift {fmt_float(best.drift, 3)}); queue with {only_slot}--layer {esc(best.slot)}={best.layer}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
