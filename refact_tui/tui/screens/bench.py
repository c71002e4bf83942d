"""Bench screen: the stored bench runs, and the selected run's aggregate panels and per-row results."""

from __future__ import annotations

import sqlite3

import sqlite_utils
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Static

from refact_tui.services.bench_view import BenchView, fmt_value, headline, list_runs, row_cells, space_title, view_run
from refact_tui.tui.screens.base import DashboardScreen, titled
from refact_tui.tui.widgets.keyed_table import KeyedTable

METRICS = ("efficacy", "generality", "specificity", "f1")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


class BenchRunsTable(KeyedTable):
    COLUMNS = ("run", "method", "rows", "spaces", "eff", "gen", "spec", "F1", "s/edit")

    def show(self, runs: list[BenchView]) -> None:
        rows = []
        for r in runs:
            h = headline(r)
            rows.append((r.id, (r.id, r.method, r.n_rows, ",".join(r.spaces), *(_f(h.get(m)) for m in METRICS),
                                f"{r.seconds_per_edit():.2f}")))
        self.replace_rows(rows)


class BenchRowsTable(KeyedTable):
    COLUMNS = ("#", "prompt", "source → target", "text E G S", "xattn E G S", "image E G S", "failed probes")

    def show(self, view: BenchView | None) -> None:
        rows = []
        if view is not None:
            spaces = ["text", "xattn", "image"]
            for r in view.rows:
                failed = "; ".join(f"{s}: {len(ps)}" for s, ps in r.failed.items() if ps) or "-"
                rows.append((r.index, (r.index + 1, r.prompt, f"{r.source} → {r.target}", *row_cells(r, spaces), failed)))
        self.replace_rows(rows)


def aggregate_table(view: BenchView) -> Table:
    """The paper layout: one block per space, method / baseline / oracle rows, value ± std."""
    table = Table(expand=True, show_edge=False, header_style="bold")
    for col in ("space", "", "efficacy", "generality", "specificity", "F1"):
        table.add_column(col)
    last = None
    for p in view.paper:
        table.add_row(space_title(p.space) if p.space != last else "", p.variant,
                      *(fmt_value(*p.values[m]) for m in METRICS),
                      style="bold" if p.variant == view.method else None)
        last = p.space
    return table


class BenchScreen(DashboardScreen):
    """`refact bench` runs: pick one to see its aggregates (text, proxy, images) and its rows."""

    TITLE = "refact-tui · Bench"
    BINDINGS: list = []  # read-only screen: only the app's keys (and no inherited focus keys)
    DEFAULT_CSS = """
    #bench-top { height: 12; }
    #bench-runs { width: 1fr; }
    #bench-aggregates { width: 2fr; border: round $primary; padding: 0 1; }
    #bench-rows { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__(id="bench-screen")
        self.runs: list[BenchView] = []
        self.shown: int | None = None
        self.view: BenchView | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="bench-status", classes="status-line")
        with Horizontal(id="bench-top"):
            yield titled(BenchRunsTable(id="bench-runs"), "Bench runs")
            yield titled(Static(id="bench-aggregates"), "Aggregates")
        yield titled(BenchRowsTable(id="bench-rows"), "Per row")
        yield Footer()

    def refresh_from(self, db: sqlite_utils.Database, now: float) -> None:
        try:
            self.runs = list_runs(db)
        except (sqlite3.Error, Exception) as exc:  # noqa: BLE001 - an older workspace without bench tables
            self.runs = []
            self.query_one("#bench-status", Static).update(Text(f"no bench runs ({exc})", style="dim"))
            return
        status = Text(f"{len(self.runs)} bench run(s)", style="bold")
        status.append(" · run `refact bench FILE --method refact|time|uce` to add one", style="dim")
        self.query_one("#bench-status", Static).update(status)
        self.query_one(BenchRunsTable).show(self.runs)
        self._show(db, force=True)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "bench-runs":
            self._show(self.refact.read_db, force=False)

    def _show(self, db, force: bool) -> None:
        run_id = self.query_one(BenchRunsTable).selected_id
        if db is None or (run_id == self.shown and not force):
            return
        self.shown = run_id
        self.view = view_run(db, run_id) if run_id is not None else None
        agg = self.query_one("#bench-aggregates", Static)
        if self.view is None:
            agg.update(Text("no run selected", style="dim"))
        else:
            q = self.view.quality
            agg.border_title = f"Run {self.view.id} · {self.view.method} · {self.view.n_rows} rows"
            body = aggregate_table(self.view)
            agg.update(body)
            if q:
                agg.border_subtitle = (f"CLIP before {q['clip_score_before']:.2f} · after {q['clip_score']:.2f}"
                                       + (f" · FID {q['fid']:.2f}" if q.get("fid") is not None else ""))
        self.query_one(BenchRowsTable).show(self.view)
