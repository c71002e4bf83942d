"""Reading stored bench runs for the CLI and the TUI: the paper table, per-row lines, comparisons."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from refact_tui.services.bench_config import config_differences
from refact_tui.services.bench_scores import REPORT_METRICS, SPACE_TITLES, SPACES, VARIANTS


@dataclass(frozen=True)
class PaperLine:
    """One line of the paper's table: a space and variant with (value, std) per metric."""

    space: str
    variant: str                                  # the method's name, "baseline" or "oracle"
    values: dict[str, tuple[float | None, float | None]]


@dataclass(frozen=True)
class RowLine:
    index: int
    prompt: str
    source: str
    target: str
    metrics: dict[str, dict[str, float]]
    failed: dict[str, list[str]]
    seconds: float


@dataclass
class BenchView:
    id: int
    method: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    n_rows: int
    seconds: float
    created_at: float
    rerun_of: int | None
    paper: list[PaperLine] = field(default_factory=list)
    rows: list[RowLine] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    edit_seconds: list[float] = field(default_factory=list)

    @property
    def spaces(self) -> list[str]:
        return list(dict.fromkeys(p.space for p in self.paper))

    def seconds_per_edit(self) -> float:
        secs = [r.seconds for r in self.rows] or self.edit_seconds
        return sum(secs) / len(secs) if secs else 0.0


def paper_lines(method: str, aggregates: dict[str, dict[str, dict[str, Any]]]) -> list[PaperLine]:
    out = []
    for space in SPACES:
        if space not in aggregates:
            continue
        for variant in VARIANTS:
            agg = aggregates[space].get(variant, {})
            vals = {m: (agg[m]["value"], agg[m].get("std")) if m in agg else (None, None) for m in REPORT_METRICS}
            out.append(PaperLine(space, method if variant == "method" else variant, vals))
    return out


def _db(ws_or_db):
    return getattr(ws_or_db, "db", ws_or_db)


def view_run(ws, run_id: int, with_rows: bool = True) -> BenchView:
    """A stored run as tables (``ws``: a Workspace or its database)."""
    from store.bench_runs import bench_rows, get_bench_run

    rec = get_bench_run(_db(ws), run_id)
    view = BenchView(rec.id, rec.method, rec.hparams, rec.config, rec.n_rows, rec.seconds, rec.created_at,
                     rec.rerun_of, paper_lines(rec.method, rec.summary.get("aggregates", {})),
                     quality=dict(rec.summary.get("quality", {})), notes=list(rec.summary.get("notes", [])),
                     edit_seconds=list(rec.summary.get("edit_seconds", [])))
    if with_rows:
        for r in bench_rows(_db(ws), run_id):
            q = r.request
            view.rows.append(RowLine(r.row_index, q.get("prompt", ""), q.get("source", ""), q.get("target", ""),
                                     r.metrics, r.failed, r.seconds))
    return view


def list_runs(ws) -> list[BenchView]:
    """Every stored run (without rows), newest first (``ws``: a Workspace or its database)."""
    from store.bench_runs import list_bench_runs

    return [BenchView(r.id, r.method, r.hparams, r.config, r.n_rows, r.seconds, r.created_at, r.rerun_of,
                      paper_lines(r.method, r.summary.get("aggregates", {})), quality=dict(r.summary.get("quality", {})),
                      notes=list(r.summary.get("notes", [])), edit_seconds=list(r.summary.get("edit_seconds", [])))
            for r in list_bench_runs(_db(ws))]


def headline(view: BenchView) -> dict[str, float | None]:
    """The method's values in the truest space it has (image, else proxy, else text)."""
    for space in ("image", "xattn", "text"):
        for line in view.paper:
            if line.space == space and line.variant == view.method:
                return {m: v[0] for m, v in line.values.items()}
    return {}


@dataclass
class Comparison:
    a: BenchView
    b: BenchView
    lines: list[tuple[str, str, str, float | None, float | None]]   # space, variant, metric, a, b
    differences: list[tuple[str, Any, Any]]                         # config key, a, b


def compare_runs(ws, a: int, b: int) -> Comparison:
    """Side by side aggregates of two runs and every config difference."""
    va, vb = view_run(ws, a, with_rows=False), view_run(ws, b, with_rows=False)
    lines = []
    for space in SPACES:
        for variant in VARIANTS:
            la = _line(va, space, variant)
            lb = _line(vb, space, variant)
            if la is None and lb is None:
                continue
            for m in REPORT_METRICS:
                lines.append((space, variant, m, la.values[m][0] if la else None, lb.values[m][0] if lb else None))
    return Comparison(va, vb, lines, config_differences(va.config, vb.config))


def _line(view: BenchView, space: str, variant: str) -> PaperLine | None:
    name = view.method if variant == "method" else variant
    return next((p for p in view.paper if p.space == space and p.variant == name), None)


def fmt_value(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ± {std:.3f}" if std is not None else f"{value:.3f}"


def write_csv(view: BenchView, path: Path) -> None:
    """The per-row table as CSV (one column per space x metric, then the failed probes)."""
    spaces = view.spaces
    cols = [f"{s}_{m}" for s in spaces for m in REPORT_METRICS]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "prompt", "source", "target", *cols, "seconds", "failed"])
        for r in view.rows:
            vals = [r.metrics.get(s, {}).get(m) for s in spaces for m in REPORT_METRICS]
            failed = "; ".join(f"{s}: {p}" for s, ps in r.failed.items() for p in ps)
            w.writerow([r.index + 1, r.prompt, r.source, r.target, *["" if v is None else f"{v:.6g}" for v in vals],
                        f"{r.seconds:.4f}", failed])


def space_title(space: str) -> str:
    return SPACE_TITLES.get(space, space)


def row_cells(row: RowLine, spaces: Sequence[str]) -> list[str]:
    """E/G/S of each space as 'e g s' strings."""
    out = []
    for s in spaces:
        m = row.metrics.get(s, {})
        out.append(" ".join("-" if m.get(k) is None else f"{m[k]:.2f}" for k in ("efficacy", "generality", "specificity")))
    return out
