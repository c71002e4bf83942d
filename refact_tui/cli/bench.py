"""`refact bench FILE ...` and `refact bench ls|show|compare|rerun`: thin wrappers over services.bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click
import typer

from refact_tui.cli.common import JSON_OPTION, console, open_workspace, print_json, print_table, short
from refact_tui.cli.eval import progress_printer

IMG = "Image space"


class _DefaultRun(typer.core.TyperGroup):
    """`refact bench FILE ...` runs a bench; ls / show / compare / rerun are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(cls=_DefaultRun, no_args_is_help=True,
                        help="Benchmark an edit method on a request file, each row on the clean base: "
                             "`refact bench FILE [OPTIONS]` (`refact bench run --help` lists the options); "
                             "ls / show / compare / rerun inspect stored runs.")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench", rich_help_panel="Evaluation")


def _parse_hp(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            from engine.methods.refact.hparams import HParamsError

            raise HParamsError(f"--hp {item!r} is not KEY=VALUE; pass e.g. --hp lam=0.1")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _hparams(method: str, hp: list[str], layer: list[str] | None, slots: str | None) -> dict[str, Any]:
    """--hp KEY=VALUE plus ReFACT's --layer / --slots (the same values `refact queue add` takes)."""
    from engine.methods.refact.hparams import HParamsError
    from refact_tui.cli.common import parse_layers, parse_slots

    per_slot = {**parse_layers(layer), **parse_slots(slots)}
    if per_slot and method.strip().lower() != "refact":
        raise HParamsError(f"--layer and --slots choose ReFACT's encoder slots; {method} takes --hp KEY=VALUE")
    if "slots" in per_slot:
        per_slot["slots"] = list(per_slot["slots"])
    return {**_parse_hp(hp), **per_slot}


@bench_app.command("run", hidden=True)
def run(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Request file: RoAD CSV, TIMED CSV, JSONL or JSON."),
    method: str = typer.Option("refact", "--method", help="refact, time or uce."),
    hp: list[str] = typer.Option([], "--hp", help="Method hyperparameter KEY=VALUE (repeatable), e.g. layer=9, "
                                 "lam=0.1, with_to_k=true."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", help="ReFACT: N (the first encoder slot) or SLOT=N "
                                              "per slot, repeatable, as for `refact queue add`."),
    slots: Optional[str] = typer.Option(None, "--slots", help="ReFACT: encoder slots to edit, comma-separated "
                                        "(default: every text encoder of the pipeline, as a queued job)."),
    text_only: bool = typer.Option(False, "--text-only", help="Text space and cross-attention proxy only."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N rows only."),
    negatives: Optional[Path] = typer.Option(None, "--negatives", help="ICEB: class-prompt file "
                                             "(modify_imgnet_prompts.csv) for the specificity probes."),
    seeds: int = typer.Option(25, "--seeds", help="Images per prompt (paper: 25).", rich_help_panel=IMG),
    steps: int = typer.Option(50, "--steps", help="Denoising steps (paper: 50).", rich_help_panel=IMG),
    size: Optional[int] = typer.Option(None, "--size", help="Image side (default: the pipeline's).", rich_help_panel=IMG),
    judge: Optional[str] = typer.Option(None, "--judge", help="open_clip judge MODEL:CHECKPOINT.", rich_help_panel=IMG),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Caption file for the quality check (one per "
                                            "line, e.g. COCO); default: the project's captions.", rich_help_panel=IMG),
    n_captions: int = typer.Option(8, "--n-captions", help="Captions used (0 = no quality check).", rich_help_panel=IMG),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per generation batch.", rich_help_panel=IMG),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder (default: the workspace's base model)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Load the model in float32 | float16 | bfloat16 "
                                        "(default: the workspace's, `refact init --dtype`)."),
    stats_samples: Optional[int] = typer.Option(None, "--stats-samples", help="ReFACT: corpus lines for C."),
    json_out: bool = JSON_OPTION,
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the per-row table as CSV."),
) -> None:
    """Edit every row independently on the unedited base, score it, revert; store the run."""
    from refact_tui.services.bench import run_bench
    from refact_tui.services.bench_config import BenchOptions
    from refact_tui.services.plan import BENCH
    from refact_tui.services.preflight import preflight

    options = BenchOptions(file=str(file.expanduser().absolute()), method=method,
                           hparams=_hparams(method, hp, layer, slots),
                           text_only=text_only, limit=limit, seeds=seeds, steps=steps, height=size, width=size,
                           negatives=str(negatives.expanduser().absolute()) if negatives else None,
                           judge=judge, captions=str(captions) if captions else None, n_captions=n_captions,
                           batch_size=batch_size, model=model, device=device, stats_samples=stats_samples)
    progress, on_progress = progress_printer(disable=json_out)
    with open_workspace(ctx) as ws:
        preflight(ws, BENCH, device, dtype, model=model)  # before anything loads
        ws.dtype = dtype  # every load of this command (services.working_model.load_dtype)
        with progress:
            report = run_bench(ws, options, on_progress=on_progress)
    from engine.distributed import is_main_process

    if is_main_process():  # under accelerate every process holds the run id; one prints the report
        _finish(ctx, report.run_id, json_out, csv_out)


def _finish(ctx, run_id: int, json_out: bool, csv_out: Path | None) -> None:
    from refact_tui.services.bench_view import view_run, write_csv

    with open_workspace(ctx, read_only=True) as ws:
        view = view_run(ws, run_id)
    if csv_out is not None:
        write_csv(view, csv_out)
    if json_out:
        print_json(view.to_dict())
        return
    print_view(view)
    if csv_out is not None:
        console.print(f"per-row table written to {csv_out}")


def print_view(view) -> None:
    """The paper table per space, the per-row table with failed probes, quality and notes."""
    from refact_tui.services.bench_view import edited_label, fmt_value, row_cells, space_title

    console.print(f"[bold]bench run {view.id}[/]: {view.method} on {view.n_rows} row(s) of "
                  f"{view.config.get('corpus', {}).get('path', '?')} ({view.seconds:.1f} s, "
                  f"{view.seconds_per_edit():.3f} s per edit)" + (f", rerun of {view.rerun_of}" if view.rerun_of else ""))
    for space in view.spaces:
        print_table(space_title(space), ["", "efficacy", "generality", "specificity", "F1"],
                    [(p.variant, *(fmt_value(*p.values[m]) for m in ("efficacy", "generality", "specificity", "f1")))
                     for p in view.paper if p.space == space])
    if view.rows:
        spaces = view.spaces
        print_table("per row (efficacy generality specificity)",
                    ["#", "prompt", "source → target", *spaces, "edited", "failed probes"],
                    [(r.index + 1, short(r.prompt, 28), short(f"{r.source} → {r.target}", 34), *row_cells(r, spaces),
                      edited_label(r.edited), _failed(r.failed)) for r in view.rows])
    q = view.quality
    if q:
        fid = "-" if q.get("fid") is None else f"{q['fid']:.2f}"
        console.print(f"captions ({q.get('n_captions')}): CLIP score before {q['clip_score_before']:.2f}, "
                      f"after {q['clip_score']:.2f} (mean over rows); FID {fid}")
    for note in view.notes:
        console.print(f"note  {note}")


def _failed(failed: dict[str, list[str]]) -> str:
    """Compact: 'image 3: edit,pos2,neg1' per space (the full prompts are in --json and --csv)."""

    def tag(label: str) -> str:
        head = label.split(":", 1)[0]
        return head.replace("positive ", "pos").replace("negative ", "neg") if head != label else short(label, 40)

    parts = [f"{space} {len(ps)}: {','.join(tag(p) for p in ps)}" for space, ps in failed.items() if ps]
    return "; ".join(parts) if parts else "-"


@bench_app.command("ls")
def ls(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Stored bench runs, newest first."""
    import datetime as dt

    from refact_tui.services.bench_view import headline, list_runs

    with open_workspace(ctx, read_only=True) as ws:
        runs = list_runs(ws)
    if json_out:
        print_json([{"id": r.id, "method": r.method, "rows": r.n_rows, "headline": headline(r), "seconds": r.seconds,
                     "corpus": r.config.get("corpus"), "rerun_of": r.rerun_of} for r in runs])
        return
    rows = []
    for r in runs:
        h = headline(r)
        fmt = lambda k: "-" if h.get(k) is None else f"{h[k]:.3f}"  # noqa: E731
        rows.append((r.id, dt.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M"), r.method, r.n_rows,
                     ",".join(r.spaces), Path(r.config.get("corpus", {}).get("path", "?")).name,
                     fmt("efficacy"), fmt("generality"), fmt("specificity"), fmt("f1"), r.rerun_of))
    print_table("bench runs", ["id", "when", "method", "rows", "spaces", "file", "eff", "gen", "spec", "F1", "rerun of"],
                rows)


@bench_app.command("show")
def show(ctx: typer.Context, run_id: int = typer.Argument(...), json_out: bool = JSON_OPTION,
         csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the per-row table as CSV.")) -> None:
    """One stored run: the paper table and the per-row results."""
    _finish(ctx, run_id, json_out, csv_out)


@bench_app.command("compare")
def compare(ctx: typer.Context, run_a: int = typer.Argument(...), run_b: int = typer.Argument(...),
            json_out: bool = JSON_OPTION) -> None:
    """Two runs side by side, with every config difference called out."""
    from refact_tui.services.bench_view import compare_runs, space_title

    with open_workspace(ctx, read_only=True) as ws:
        cmp = compare_runs(ws, run_a, run_b)
    if json_out:
        print_json({"a": cmp.a.id, "b": cmp.b.id, "lines": cmp.lines, "differences": cmp.differences})
        return
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    va, vb = f"run {cmp.a.id} ({cmp.a.method})", f"run {cmp.b.id} ({cmp.b.method})"
    print_table(f"bench run {cmp.a.id} vs {cmp.b.id}", ["space", "row", "metric", va, vb, "b - a"],
                [(space_title(s), cmp.a.method if v == "method" and cmp.a.method == cmp.b.method else v, m, fmt(a), fmt(b),
                  "-" if a is None or b is None else f"{b - a:+.3f}") for s, v, m, a, b in cmp.lines])
    if cmp.differences:
        print_table("config differences", ["key", va, vb],
                    [(k, short(json.dumps(a, default=str), 40), short(json.dumps(b, default=str), 40))
                     for k, a, b in cmp.differences])
    else:
        console.print("configs are identical")


@bench_app.command("rerun")
def rerun(ctx: typer.Context, run_id: int = typer.Argument(...), json_out: bool = JSON_OPTION) -> None:
    """Run a stored bench again with exactly its stored config (the request file must be unchanged)."""
    from refact_tui.services.bench import rerun_bench

    progress, on_progress = progress_printer(disable=json_out)
    with open_workspace(ctx) as ws, progress:
        report = rerun_bench(ws, run_id, on_progress=on_progress)
    _finish(ctx, report.run_id, json_out, None)
