"""Reading stored bench runs for the CLI and the TUI: the paper table, per-row lines, comparisons."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from refact_tui.services.bench_config import config_differences
from refact_tui.services.bench_scores import REPORT_METRICS, SPACE_TITLES, SPACES, VARIANTS
from store.bench_runs import BenchRunRecord


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
    edited: list[dict[str, Any]] = field(default_factory=list)  # {"slot", "layer", "module"}: what the edit changed


_RECORD_FIELDS = frozenset(f.name for f in fields(BenchRunRecord))


@dataclass
class BenchView:
    """A stored run as the CLI and the TUI show it: the record itself (its fields read through,
    ``view.id``, ``view.method``, ``view.config``, ...), what its summary holds, and its rows."""

    record: BenchRunRecord
    rows: list[RowLine] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name in _RECORD_FIELDS:  # only called when normal lookup fails: the record's fields
            return getattr(self.record, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @cached_property
    def paper(self) -> list[PaperLine]:
        return paper_lines(self.record.method, self.record.summary.get("aggregates", {}))

    @property
    def quality(self) -> dict[str, Any]:
        return dict(self.record.summary.get("quality", {}))

    @property
    def notes(self) -> list[str]:
        return list(self.record.summary.get("notes", []))

    @property
    def edit_seconds(self) -> list[float]:
        return list(self.record.summary.get("edit_seconds", []))

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form: the run's fields, its paper table, rows, quality, notes and edit times."""
        from dataclasses import asdict

        r = self.record
        return {"id": r.id, "method": r.method, "hparams": r.hparams, "config": r.config, "n_rows": r.n_rows,
                "seconds": r.seconds, "created_at": r.created_at, "rerun_of": r.rerun_of,
                "paper": [asdict(p) for p in self.paper], "rows": [asdict(x) for x in self.rows],
                "quality": self.quality, "notes": self.notes, "edit_seconds": self.edit_seconds}

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

    view = BenchView(get_bench_run(_db(ws), run_id))
    if with_rows:
        edited = view.record.summary.get("edited", [])
        for r in bench_rows(_db(ws), run_id):
            q = r.request
            parts = edited[r.row_index] if r.row_index < len(edited) else []
            view.rows.append(RowLine(r.row_index, q.get("prompt", ""), q.get("source", ""), q.get("target", ""),
                                     r.metrics, r.failed, r.seconds, parts))
    return view


def list_runs(ws) -> list[BenchView]:
    """Every stored run (without rows), newest first (``ws``: a Workspace or its database)."""
    from store.bench_runs import list_bench_runs

    return [BenchView(r) for r in list_bench_runs(_db(ws))]


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
        w.writerow(["row", "prompt", "source", "target", *cols, "seconds", "edited", "failed"])
        for r in view.rows:
            vals = [r.metrics.get(s, {}).get(m) for s in spaces for m in REPORT_METRICS]
            failed = "; ".join(f"{s}: {p}" for s, ps in r.failed.items() for p in ps)
            w.writerow([r.index + 1, r.prompt, r.source, r.target, *["" if v is None else f"{v:.6g}" for v in vals],
                        f"{r.seconds:.4f}", edited_label(r.edited), failed])


def edited_label(parts: Sequence[dict[str, Any]]) -> str:
    """'text_encoder@7 text_encoder_2@26' (a UNet edit: its component and module summary); '-' for none."""
    return " ".join(f"{p['slot']}@{p['layer']}" if p.get("layer") is not None else str(p.get("module") or p["slot"])
                    for p in parts) or "-"


def space_title(space: str) -> str:
    return SPACE_TITLES.get(space, space)


def row_cells(row: RowLine, spaces: Sequence[str]) -> list[str]:
    """E/G/S of each space as 'e g s' strings."""
    out = []
    for s in spaces:
        m = row.metrics.get(s, {})
        out.append(" ".join("-" if m.get(k) is None else f"{m[k]:.2f}" for k in ("efficacy", "generality", "specificity")))
    return out
