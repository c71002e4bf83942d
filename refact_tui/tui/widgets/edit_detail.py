"""Detail pane of one edit: request, hparams, loss curve, metrics, before/after grid."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from refact_tui.services.batch_view import BatchDetailView
from refact_tui.services.convergence import edit_budget_used
from refact_tui.services.dashboard import EditDetailView
from refact_tui.services.display import plain
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.batch_table import BatchTable
from refact_tui.tui.widgets.hparams_view import hparams_table
from refact_tui.tui.widgets.image_preview import ImagePreview
from refact_tui.tui.widgets.loss_plot import LossPlot


def _summary(d: EditDetailView) -> Table:
    e = d.edit
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold")
    t.add_column()
    hist = d.history.name if d.history else "?"
    t.add_row("edit", plain(f"#{e.seq} of history '{hist}' (id {e.id}, job {e.job_id or '-'})"))
    t.add_row("status", plain(e.status.replace("_", " ") + (f": {e.error}" if e.error else "")))
    for line in fmt.request_lines(e.request):
        key, _, value = line.partition(" ")
        t.add_row(key, plain(value.strip()))
    t.add_row("module", plain(e.module))
    threshold = getattr(e.hparams, "prob_threshold", None)
    stop = "early stop" if e.early_stopped else "step budget used"
    if edit_budget_used(e):
        stop += f", P {e.p_target:.2f} < {threshold:g}"
    t.add_row("result", f"P(target) {fmt.num(e.p_target)} after {e.steps_run} steps ({stop}), "
                        f"||δ|| {fmt.num(e.delta_norm)}, k·u {fmt.num(e.division_factor)}")
    t.add_row("time", ", ".join(f"{k.removesuffix('_s')} {fmt.duration(v)}" for k, v in e.timings.items()) or "-")
    t.add_row("delta", plain(e.delta_path or "-"))
    return t


def _metrics(d: EditDetailView) -> Table | Text:
    if not d.metrics:
        return Text("no metrics yet (Metrics screen: t = text evaluation, i = image evaluation)", style="dim")
    # several encoder slots: one column per slot; "value" is then the mean over the edited slots
    slots = list(dict.fromkeys(m.slot for m in d.slot_metrics))
    per = {(m.slot, m.space, m.name): m.value for m in d.slot_metrics}
    t = Table(box=None, padding=(0, 1), show_edge=False)
    for col in ("space", "metric", "value", *slots, "n"):
        t.add_column(plain(col), style="bold" if col == "metric" else None)
    for m in d.metrics:
        cells = [fmt.num(per.get((s, m.space, m.name))) for s in slots]
        t.add_row(plain(m.space), plain(m.name), fmt.num(m.value), *cells,
                  f"{m.n}/{m.total}" if m.total else str(m.n))
    return t


class EditDetail(VerticalScroll):
    """Scrollable detail of the edit selected in the history table."""

    def compose(self) -> ComposeResult:
        yield Static(id="detail-summary")
        yield ImagePreview(id="detail-grid")
        yield BatchTable(id="detail-batch")
        with Horizontal(id="detail-mid"):
            yield LossPlot(id="detail-loss")
            yield Static(id="detail-hparams")
        yield Static(id="detail-metrics")

    detail: EditDetailView | None = None

    def show(self, d: EditDetailView | None) -> None:
        if d is not None and d == self.detail:
            return  # a poll while nothing about this edit changed: keep the plot and image as they are
        self.detail = d
        if d is None:
            self.query_one("#detail-summary", Static).update(Text("Select an edit.", style="dim"))
            self.query_one("#detail-loss", LossPlot).set_points([], [])
            for wid in ("#detail-hparams", "#detail-metrics"):
                self.query_one(wid, Static).update("")
            self.query_one(ImagePreview).show(None)
            return
        self.query_one("#detail-summary", Static).update(_summary(d))
        self.query_one("#detail-loss", LossPlot).set_points([s.step for s in d.steps], [s.loss for s in d.steps])
        self.query_one("#detail-hparams", Static).update(hparams_table(d.edit.hparams))
        self.query_one("#detail-metrics", Static).update(_metrics(d))
        self.query_one(ImagePreview).show(d.grid_path, d.grid_relpath)

    def show_batch(self, view: BatchDetailView | None) -> None:
        """A batch edit's requests (hidden for a single edit); its loss plot is the mean over them."""
        self.query_one(BatchTable).show_detail(view)
        if view is not None and view.curve:
            self.query_one("#detail-loss", LossPlot).set_points([s for s, _ in view.curve], [v for _, v in view.curve])
