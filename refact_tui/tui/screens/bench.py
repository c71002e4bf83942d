"""Bench screen: the stored bench runs, and the selected run's aggregate panels and per-row results."""

from __future__ import annotations

import sqlite3

import sqlite_utils
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from refact_tui.services.bench_view import (
    BenchView,
    Comparison,
    compare_runs,
    fmt_value,
    headline,
    list_runs,
    row_cells,
    space_title,
    view_run,
)
from refact_tui.services.display import plain
from refact_tui.tui.keys import SCREEN_KEYS, bindings
from refact_tui.tui.screens.base import DashboardScreen, titled
from refact_tui.tui.screens.info import InfoModal
from refact_tui.tui.widgets.keyed_table import KeyedTable

METRICS = ("efficacy", "generality", "specificity", "f1")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


class BenchRunsTable(KeyedTable):
    COLUMNS = ("run", "method", "rows", "spaces", "eff", "gen", "spec", "F1", "s/edit")
    MARKABLE = True

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
    BINDINGS = bindings(SCREEN_KEYS["bench"])

    def __init__(self) -> None:
        super().__init__(id="bench-screen")
        self.runs: list[BenchView] = []
        self.shown: int | None = None
        self.view: BenchView | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="bench-status", classes="status-line")
        yield titled(BenchRunsTable(id="bench-runs"), "Bench runs (enter opens · space marks two · c compares)")
        yield titled(Static(id="bench-aggregates"), "Aggregates")
        yield titled(BenchRowsTable(id="bench-rows"), "Per row")
        yield Footer(show_command_palette=False, compact=True)

    def read(self, db: sqlite_utils.Database, now: float) -> list[BenchView] | Exception:
        try:
            return list_runs(db)
        except (sqlite3.Error, Exception) as exc:  # noqa: BLE001 - an older workspace without bench tables
            return exc

    def draw(self, runs: list[BenchView] | Exception) -> None:
        if isinstance(runs, Exception):
            self.runs = []
            self.query_one("#bench-status", Static).update(Text(f"no bench runs ({runs})", style="dim"))
            return
        self.runs = runs
        status = Text(f"{len(self.runs)} bench run(s)", style="bold")
        status.append(" · run `refact bench FILE --method refact|time|uce` to add one", style="dim")
        self.query_one("#bench-status", Static).update(status)
        self.query_one(BenchRunsTable).show(self.runs)
        self._show(self.refact.read_db, force=True)  # one run: a short read
        self.show_filter_count()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "bench-runs":
            self._show(self.refact.read_db, force=False)

    def _show(self, db, force: bool) -> None:
        run_id = self.query_one(BenchRunsTable).selected_id
        if db is None or (run_id == self.shown and not force):
            return
        self.shown = run_id
        self.view = view_run(db, run_id) if run_id is not None else None
        agg = body = self.query_one("#bench-aggregates", Static)
        if self.view is None:
            agg.border_title = "Aggregates"
            body.update(Text("no run selected", style="dim"))
        else:
            q = self.view.quality
            agg.border_title = f"Run {self.view.id} · {self.view.method} · {self.view.n_rows} rows"
            body.update(aggregate_table(self.view))
            if q:
                agg.border_subtitle = (f"CLIP before {q['clip_score_before']:.2f} · after {q['clip_score']:.2f}"
                                       + (f" · FID {q['fid']:.2f}" if q.get("fid") is not None else ""))
        self.query_one(BenchRowsTable).show(self.view)

    # --- actions ---------------------------------------------------------------------------------

    def filter_target(self) -> KeyedTable:
        """The focused table (runs or rows); the per-row table by default."""
        focused = self.focused
        return focused if isinstance(focused, BenchRunsTable) else self.query_one(BenchRowsTable)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "bench-runs":
            event.stop()
            self.action_open_run()

    def action_open_run(self) -> None:
        """Show the selected run's rows and move to them (tab goes back to the runs)."""
        self._show(self.refact.read_db, force=False)
        self.query_one(BenchRowsTable).focus()

    def action_toggle_mark(self) -> None:
        table = self.query_one(BenchRunsTable)
        toggled = table.selected_id
        table.action_toggle_mark()
        if len(table.marked_ids) > 2:  # a comparison takes two: the one just marked and one earlier mark
            table.set_marks([toggled, next(i for i in table.marked_ids if i != toggled)])

    def _pair(self) -> tuple[int, int] | None:
        table = self.query_one(BenchRunsTable)
        marked = table.marked_ids
        if len(marked) == 2:
            return marked[0], marked[1]
        ids = table.row_ids
        sel = table.selected_id
        if sel is None or len(ids) < 2:
            return None
        i = ids.index(sel)
        other = ids[i + 1] if i + 1 < len(ids) else ids[i - 1]
        return sel, other

    def action_compare(self) -> None:
        pair, db = self._pair(), self.refact.read_db
        if pair is None or db is None:
            self.notify("Compare needs two bench runs: mark two with space.", severity="warning")
            return
        cmp = compare_runs(db, *pair)
        self.app.push_screen(InfoModal(f"Bench run {pair[0]} vs run {pair[1]}", comparison_table(cmp)))

    def action_rerun(self) -> None:
        run_id = self.query_one(BenchRunsTable).selected_id
        run = next((r for r in self.runs if r.id == run_id), None)
        if run is None:
            self.notify("Select a bench run to rerun.", severity="warning")
            return
        self.refact.confirm(
            f"Rerun bench run {run.id}?",
            f"Run {run.method} again on the same {run.n_rows} row(s) with the options stored in run {run.id} "
            "(same corpus, hyperparameters, seeds and judge); it is stored as a new run and can take minutes.",
            lambda: self.refact.run_service("Rerun bench", "bench", "rerun_bench", run.id),
            yes="Rerun",
        )


def comparison_table(cmp: Comparison) -> Table:
    """Both runs' values per space / variant / metric with the difference, then the option differences."""
    t = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for col in ("space", "variant", "metric", f"run {cmp.a.id}", f"run {cmp.b.id}", "b − a"):
        t.add_column(col)
    for space, variant, metric, a, b in cmp.lines:
        diff = "-" if a is None or b is None else f"{b - a:+.3f}"
        t.add_row(space_title(space), variant, metric, _f(a), _f(b), diff)
    if cmp.differences:
        t.add_row("", "", "", "", "", "")
        for key, a, b in cmp.differences:
            t.add_row("option", plain(key), "", plain(a), plain(b), "")
    else:
        t.add_row("option", "(identical)", "", "", "", "")
    return t
