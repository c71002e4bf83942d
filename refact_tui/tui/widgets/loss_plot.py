"""Optimization curves drawn with textual-plotext (per-widget ``plt``, never plotext's globals)."""

from __future__ import annotations

from typing import Sequence

from textual_plotext import PlotextPlot

MAX_POINTS = 600  # more than a braille plot of a wide terminal can show; more only costs redraw time


def thin(pts: list[tuple[float, float]], most: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Every k-th point (the last always kept) so that at most about ``most`` remain."""
    if len(pts) <= most:
        return pts
    stride = -(-len(pts) // most)
    out = pts[::stride]
    return out if out[-1] == pts[-1] else [*out, pts[-1]]


def step_ticks(first: int, last: int, most: int = 5) -> list[int]:
    """At most ``most`` whole-number ticks from ``first`` to ``last`` (steps are integers)."""
    stride = max(1, -(-(last - first) // (most - 1)))
    return list(range(first, last + 1, stride))


def y_range_note(ys: Sequence[float]) -> str:
    """'  first 1.82 → last 0.241 (-87%)', or '  constant 0.5': the figures behind an autoscaled axis,
    so a 0.3 % change drawn full height still reads as 0.3 %."""
    first, last = ys[0], ys[-1]
    if max(ys) - min(ys) <= 1e-12 * max(1.0, abs(max(ys))):
        return f"  constant {last:.4g}"
    change = f" ({(last - first) / abs(first):+.1%})" if first else ""
    return f"  {first:.4g} → {last:.4g}{change}"


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
        # NaN steps (divergence) are skipped: plotext cannot draw them.
        pts = thin([(x, y) for x, y in zip(self.xs, self.ys) if y == y])
        plt.title(self.title_text + (y_range_note([p[1] for p in pts]) if pts else ""))
        if self.size.height >= 10:  # a short plot keeps its rows for the curve
            plt.xlabel("step")
        if pts:
            ys = [p[1] for p in pts]
            plt.plot([p[0] for p in pts], ys, marker="braille")
            plt.xticks(step_ticks(int(pts[0][0]), int(pts[-1][0])))
            lo, hi = min(ys), max(ys)
            if hi - lo <= 1e-12 * max(1.0, abs(hi)):  # constant: mid-height, not on an edge
                pad = max(abs(hi) * 0.5, 1e-3)
                plt.ylim(lo - pad, hi + pad)
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
            last = next((y for y in reversed(self.ys) if y == y), None)
            now = f"  now {last:.3f}" if last is not None else ""
            plt.title(f"P(target){now}  (stop at {self.threshold:g})")
