"""One metric: text-space and image-space values side by side, progress and a per-edit sparkline."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Sparkline, Static

from refact_tui.services.dashboard import MetricPanelView, MetricValue
from refact_tui.tui.widgets import fmt


def _cell(space: str, mv: MetricValue | None) -> Text:
    text = Text(f"{space:<6}", style="bold")
    if mv is None:
        return text.append("not measured", style="dim")
    text.append(fmt.num(mv.value), style="bold cyan" if mv.final else "cyan")
    if mv.std is not None:
        text.append(f" ± {fmt.num(mv.std, 3)}", style="dim")
    if mv.running:
        text.append(f"  {mv.n}/{mv.total} running", style="yellow")
    elif mv.total:
        text.append(f"  n={mv.total}", style="dim")
    return text


class MetricPanel(Vertical):
    """Panel for one metric; ``show`` updates it from the metrics read-model."""

    def __init__(self, name: str, label: str) -> None:
        super().__init__(id=f"metric-{name}", classes="metric-panel")
        self.metric = name
        self.border_title = label

    def compose(self) -> ComposeResult:
        yield Static(id="values")
        yield ProgressBar(total=100, show_eta=False, show_percentage=False, id="progress")
        for space in ("text", "image"):
            with Horizontal(classes="sparks"):
                yield Label(f"{space:<5}", classes="spark-label")
                yield Sparkline([], id=f"spark-{space}")
                yield Static(id=f"note-{space}", classes="spark-note")

    def _series(self, space: str, values: list[float]) -> None:
        """A sparkline per edit; 'not measured' (no line of zeros) or 'constant V' (no line on an edge)."""
        spark = self.query_one(f"#spark-{space}", Sparkline)
        note = self.query_one(f"#note-{space}", Static)
        spark.data = values
        constant = len(values) > 1 and max(values) - min(values) <= 1e-12
        flat = not values or constant
        spark.display, note.display = not flat, flat
        if not values:
            note.update(Text("not measured", style="dim"))
        elif constant or len(values) == 1:
            note.update(Text(f"{'constant ' if constant else ''}{fmt.num(values[0])} "
                             f"({len(values)} edit{'s' if len(values) > 1 else ''})", style="dim"))

    def show(self, view: MetricPanelView) -> None:
        table = Table.grid()
        table.add_column()
        table.add_row(_cell("text", view.text))
        table.add_row(_cell("image", view.image))
        self.query_one("#values", Static).update(table)
        running = [mv for mv in (view.text, view.image) if mv is not None and mv.running]
        bar = self.query_one("#progress", ProgressBar)
        bar.display = bool(running)
        if running:
            bar.update(total=100, progress=round(100 * running[0].progress, 1))
        for space, series in (("text", view.text_series), ("image", view.image_series)):
            self._series(space, [v for _, v in series])
        self.set_class(bool(running), "running")
