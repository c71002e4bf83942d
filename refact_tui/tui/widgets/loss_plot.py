"""Optimization curves drawn with textual-plotext (per-widget ``plt``, never plotext's globals)."""

from __future__ import annotations

from typing import Sequence

from textual_plotext import PlotextPlot


def step_ticks(first: int, last: int, most: int = 5) -> list[int]:
    """At most ``most`` whole-number ticks from ``first`` to ``last`` (steps are integers)."""
    stride = max(1, -(-(last - first) // (most - 1)))
    return list(range(first, last + 1, stride))


class CurvePlot(PlotextPlot):
    """One curve over optimization steps; ``replot`` only when data changed (callers coalesce)."""

    title_text = ""
    y_label = ""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.xs: list[float] = []
        self.ys: list[float] = []

    def set_points(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        self.xs, self.ys = list(xs), list(ys)
        self.replot()

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        self.xs.extend(xs)
        self.ys.extend(ys)
        self.replot()

    def _decorate(self) -> None:
        """Hook for extra lines drawn after the curve."""

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title_text)
        plt.xlabel("step")
        # NaN steps (divergence) are skipped: plotext cannot draw them.
        pts = [(x, y) for x, y in zip(self.xs, self.ys) if y == y]
        if pts:
            plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="braille")
            plt.xticks(step_ticks(int(pts[0][0]), int(pts[-1][0])))
        self._decorate()
        self.refresh()


class LossPlot(CurvePlot):
    """Total loss (NLL + weight decay) of the v* optimization."""

    title_text = "loss"


class PTargetPlot(CurvePlot):
    """Mean P(target) with the early-stop threshold as a horizontal line."""

    title_text = "P(target)"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.threshold: float | None = None

    def set_threshold(self, threshold: float | None) -> None:
        if threshold != self.threshold:
            self.threshold = threshold
            self.replot()

    def _decorate(self) -> None:
        plt = self.plt
        plt.ylim(0.0, 1.0)
        if self.threshold is not None:
            plt.hline(self.threshold, "red")
            plt.title(f"P(target)  (early stop at {self.threshold:g})")
