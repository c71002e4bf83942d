"""Plain-text formatting shared by the widgets (numbers, durations, requests, times)."""

from __future__ import annotations

import math
import time

from engine.request import EditRequest
from refact_tui.services.display import display_text


def num(value: float | None, digits: int = 4) -> str:
    """A compact number, '-' for missing and 'nan' for NaN."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


def duration(seconds: float | None) -> str:
    """'-', '4.2s', '3m05s' or '1h02m'."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def clock(ts: float | None) -> str:
    """Local HH:MM:SS of an epoch time."""
    return "-" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def short(text: str | None, width: int) -> str:
    """Single-line text cut to ``width`` characters with an ellipsis (controls shown as escapes)."""
    t = display_text(" ".join((text or "").split()))
    return t if len(t) <= width else t[: max(0, width - 1)] + "…"


def change(request: EditRequest) -> str:
    """'source → target'."""
    return f"{request.source} → {request.target}"


def request_lines(request: EditRequest) -> list[str]:
    """The fields of a request, one per line, for detail panes."""
    lines = [
        f"prompt   {request.prompt}",
        f"subject  {request.subject_text}",
        f"source   {request.source}",
        f"target   {request.target}",
    ]
    if request.name:
        lines.insert(0, f"name     {request.name}")
    if request.contrastive:
        lines.append(f"contrast {', '.join(request.contrastive)}")
    if request.positives or request.negatives:
        lines.append(f"probes   {len(request.positives)} positive, {len(request.negatives)} negative")
    return lines
