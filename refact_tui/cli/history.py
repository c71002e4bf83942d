"""History commands: history, show, rollback, replay, fork, histories, checkout."""

from __future__ import annotations

import typer

from refact_tui.cli.common import (
    JSON_OPTION,
    console,
    fmt_float,
    open_workspace,
    print_json,
    print_listing,
    print_table,
    short,
    with_hparam_options,
)
from refact_tui.services.convergence import edit_label
from refact_tui.services.display import markup_escape as esc
from refact_tui.services.display import quoted

PANEL = "History"


def register(app: typer.Typer) -> None:
    for name, fn in (("history", history), ("show", show), ("rollback", rollback), ("rollforward", rollforward),
                     ("replay", replay),
                     ("fork", fork), ("histories", histories), ("checkout", checkout)):
        app.command(name, rich_help_panel=PANEL)(fn)


def edit_where(e) -> str:
    """What an edit changed: its encoder layer, or for a UNet method (TIME / UCE, recorded with layer -1)
    its method and the component and modules it edited."""
    if e.layer is not None and e.layer >= 0:
        return str(e.layer)
    return f"{getattr(e, 'method', '') or 'edit'} ({e.module})" if e.module else str(getattr(e, "method", "-"))


def print_edits(edits, title: str) -> None:
    print_table(
        title,
        ["seq", "id", "status", "prompt", "source → target", "layer", "steps", "P(target)", "‖δ‖"],
        [[e.seq, e.id, edit_label(e), short(e.request.prompt, 32), short(f"{e.request.source} → {e.request.target}", 36),
          edit_where(e), e.steps_run, fmt_float(e.p_target, 3), fmt_float(e.delta_norm, 3)] for e in edits],
    )


def history(ctx: typer.Context, name: str = typer.Option(None, "--history", help="Another history than the current."),
            json_out: bool = JSON_OPTION) -> None:
    """The edits of the current history (rolled-back ones included)."""
    from refact_tui.services.history import list_history
    from refact_tui.services.working_model import resolve_history

    with open_workspace(ctx, read_only=True) as ws:
        h = resolve_history(ws, name)
        edits = list_history(ws, h.id)
    if json_out:
        print_json(edits)
    else:
        print_edits(edits, f"history {h.name} (head {h.head_seq})")


def show(ctx: typer.Context, edit_id: int = typer.Argument(..., help="Edit id (see `refact history`)."),
         json_out: bool = JSON_OPTION) -> None:
    """One edit: request, hyperparameters, loss curve, metrics, artifacts."""
    from refact_tui.services.history import edit_detail

    with open_workspace(ctx, read_only=True) as ws:
        d = edit_detail(ws, edit_id)
    if json_out:
        out = {"edit": d.edit, "history": d.history_name, "curve": d.curve, "metrics": d.metrics,
               "artifacts": d.artifacts, "slots": d.slots, "slot_curves": d.slot_curves,
               "slot_metrics": {k: {f"{m.space}/{m.name}": m.value for m in v} for k, v in d.slot_metrics.items()}}
        print_json(out)
        return
    e = d.edit
    console.print(f"[bold]edit {e.id}[/] (seq {e.seq} of {esc(d.history_name)}, {esc(edit_label(e))}, layer {esc(edit_where(e))}, "
                  f"{esc(e.device)})")
    console.print(f"  prompt  {esc(quoted(e.request.prompt))} (subject {esc(quoted(e.request.subject_text))})")
    console.print(f"  change  {esc(quoted(e.request.source))} → {esc(quoted(e.request.target))}")
    hp = e.hparams.to_dict()
    hp.pop("templates", None)
    console.print("  hparams " + esc(", ".join(f"{k}={v}" for k, v in hp.items())))
    console.print(f"  result  P(target) {fmt_float(e.p_target, 4)}, steps {e.steps_run}"
                  f"{' (early stop)' if e.early_stopped else ''}, ‖δ‖ {fmt_float(e.delta_norm)}, "
                  f"division {fmt_float(e.division_factor)}")
    for sl in d.slots if len(d.slots) > 1 else []:  # one line per encoder slot of a multi-encoder edit
        console.print(f"  slot    {esc(sl.slot)}: layer {sl.layer} ({esc(sl.readout)}), P(target) "
                      f"{fmt_float(sl.p_target, 4)}, steps {sl.steps_run}{' (early stop)' if sl.early_stopped else ''}, "
                      f"‖δ‖ {fmt_float(sl.delta_norm)}, W k_e = v* to {fmt_float(sl.verify_error, 2)}, "
                      f"weights {str(sl.weights_hash)[:12]}")
        if sl.slot in d.slot_curves and d.slot_curves[sl.slot]:
            c = d.slot_curves[sl.slot]
            console.print(f"          loss {fmt_float(c.first_loss)} → {fmt_float(c.last_loss)} over {c.steps} step rows")
    if d.curve:
        c = d.curve
        console.print(f"  loss    first {fmt_float(c.first_loss)}, last {fmt_float(c.last_loss)}, "
                      f"min {fmt_float(c.min_loss)} over {c.steps} steps; P(target) "
                      f"{fmt_float(c.p_target_start, 3)} → {fmt_float(c.p_target_end, 3)}")
    if e.timings:
        console.print("  timings " + ", ".join(f"{k} {v:.2f}s" for k, v in e.timings.items()))
    per_slot = {(k, m.space, m.name): m.value for k, rows in d.slot_metrics.items() for m in rows}
    for m in d.metrics:  # with several slots the value is their mean; each slot's follows
        each = ", ".join(f"{k} {fmt_float(per_slot[(k, m.space, m.name)])}" for k in d.slot_metrics
                         if (k, m.space, m.name) in per_slot)
        console.print(f"  metric  {m.space}/{m.name} = {fmt_float(m.value)} ({m.n}/{m.total})"
                      + (f"  [per slot: {each}]" if each else ""), markup=False)
    for a in d.artifacts:
        console.print(f"  file    {esc(a.kind)}: {esc(a.path)}")
    console.print(f"  weights {e.weights_hash}")


def rollback(ctx: typer.Context, seq: int = typer.Argument(..., help="Edit seq to go back to (0 = base model)."),
             json_out: bool = JSON_OPTION) -> None:
    """Move the head back to edit SEQ; later edits are kept, marked rolled_back."""
    from refact_tui.services.history import rollback as do_rollback

    with open_workspace(ctx) as ws:
        res = do_rollback(ws, seq)
    _report_move(res, res.rolled_back, "rolled back", json_out)


def rollforward(ctx: typer.Context,
                seq: int = typer.Argument(None, help="Rolled-back edit seq to go forward to (default: the last)."),
                json_out: bool = JSON_OPTION) -> None:
    """Undo a rollback: re-apply kept edits up to SEQ, verified bit-exact against the recorded hash."""
    from refact_tui.services.history import rollforward as do_rollforward

    with open_workspace(ctx) as ws:
        res = do_rollforward(ws, seq)
    _report_move(res, res.restored, "re-applied", json_out)


def _report_move(res, count: int, verb: str, json_out: bool) -> None:
    """One line for a head move (or its JSON)."""
    if json_out:
        print_json(res)
        return
    console.print(f"history {esc(res.history.name)}: head {res.from_seq} → {res.to_seq} ({count} edit(s) {verb}; "
                  f"weights verified {str(res.weights_hash)[:12]})")


@with_hparam_options
def replay(
    ctx: typer.Context,
    onto: str = typer.Option(None, "--onto", help="Another base model (path or cached hub id)."),
    force: bool = typer.Option(False, "--force", help="Apply onto a model with a different text encoder."),
    reoptimize: bool = typer.Option(False, "--reoptimize", help="Queue the requests again instead of re-applying."),
    name: str = typer.Option(None, "--name", help="Name of the new history."),
    json_out: bool = JSON_OPTION,
    hparams: dict | None = None,  # filled in by with_hparam_options
) -> None:
    """Re-apply the current history's edits as a new history (or re-run them with --reoptimize)."""
    from refact_tui.services.history import replay as do_replay

    with open_workspace(ctx) as ws:
        h = do_replay(ws, model=onto, force=force, reoptimize=reoptimize, hparams=hparams or None, name=name)
    if json_out:
        print_json(h)
    elif reoptimize:
        console.print(f"history [bold]{esc(h.name)}[/] created and checked out; its edits are queued (run `refact run`)")
    else:
        console.print(f"history [bold]{esc(h.name)}[/] created and checked out with {h.head_seq} re-applied edit(s)")


def fork(ctx: typer.Context, at: int = typer.Option(..., "--at", help="Edit seq to branch after (0 = base)."),
         name: str = typer.Option(..., "--name", help="Name of the new history."), json_out: bool = JSON_OPTION) -> None:
    """Branch the current history after edit AT into a new current history."""
    from refact_tui.services.history import fork as do_fork

    with open_workspace(ctx) as ws:
        h = do_fork(ws, at, name)
    print_json(h) if json_out else console.print(f"history [bold]{h.name}[/] forked at {at} and checked out")


def histories(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """All histories of the workspace."""
    from refact_tui.services.history import list_all_histories
    from refact_tui.services.history_labels import origin_label

    with open_workspace(ctx, read_only=True) as ws:
        rows = list_all_histories(ws)
    names = {r.history.id: r.history.name for r in rows}
    print_listing(rows, json_out, "histories",
                  ["", "id", "name", "head", "applied", "rolled back", "queued", "origin", "base"],
                  lambda r: ["*" if r.current else "", r.history.id, r.history.name, r.history.head_seq, r.applied,
                             r.rolled_back, r.queued, origin_label(r.history, names.get(r.history.parent_id)),
                             short(r.base_source, 40)])


def checkout(ctx: typer.Context, name: str = typer.Argument(..., help="History name or id."),
             json_out: bool = JSON_OPTION) -> None:
    """Make another history the current one."""
    from refact_tui.services.history import checkout as do_checkout

    with open_workspace(ctx) as ws:
        h = do_checkout(ws, name)
    print_json(h) if json_out else console.print(f"current history: [bold]{h.name}[/] (head {h.head_seq})")
