"""The Bench screen (key 5) on the sample workspace with two stored bench runs."""

from __future__ import annotations

from pilot_helpers import opened, text_of

from refact_tui.tui.app import RefactApp
from refact_tui.tui.screens.bench import BenchRowsTable, BenchRunsTable, BenchScreen

SIZE = (140, 44)


def _agg(e, g, s):
    f1 = 2 * g * s / (g + s)
    one = lambda v: {"value": v, "std": 0.01, "n": 10}  # noqa: E731
    return {"efficacy": one(e), "generality": one(g), "specificity": one(s), "f1": one(f1)}


def _store_runs(root) -> None:
    from store.bench_runs import insert_bench_run
    from store.db import open_db

    db = open_db(root / "refact.db")
    for method, e in (("refact", 0.9), ("time", 0.7)):
        aggregates = {space: {"method": _agg(e, 0.6, 0.8), "baseline": _agg(0.0, 0.1, 1.0), "oracle": _agg(1.0, 0.9, 0.8)}
                      for space in ("text", "xattn", "image")}
        rows = [{"row_index": i, "request": {"prompt": f"prompt {i}", "source": "old", "target": "new"},
                 "metrics": {"text": {"efficacy": 1.0, "generality": 0.5, "specificity": 1.0}},
                 "failed": {"text": ["positive 1: p"] if i else []}, "scores": {}, "seconds": 0.5,
                 "weights_hash": "h"} for i in range(3)]
        insert_bench_run(db, method=method, hparams={}, config={"corpus": {"path": "/x/rows.jsonl"}},
                         corpus_path="/x/rows.jsonl", corpus_sha256="s", rows=rows, seconds=2.0,
                         summary={"aggregates": aggregates, "notes": [], "edit_seconds": [0.5] * 3,
                                  "quality": {"clip_score_before": 30.0, "clip_score": 29.5, "n_captions": 8, "fid": None}})
    db.close()


async def test_bench_screen_lists_runs_and_shows_the_selected_run(sample_ws, S):
    _store_runs(sample_ws)
    app = RefactApp(sample_ws, clock=lambda: S.NOW, poll_interval=0.05)
    async with opened(app, size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, BenchScreen)
        runs = screen.query_one(BenchRunsTable)
        assert runs.row_count == 2 and runs.selected_id == 2  # newest first
        agg = text_of(screen.query_one("#bench-aggregates"))
        assert "image space (the truth)" in agg and "0.700 ± 0.010" in agg and "baseline" in agg and "oracle" in agg
        rows = screen.query_one(BenchRowsTable)
        assert rows.row_count == 3 and "text: 1" in str(rows.get_row_at(1)[-1])
        await pilot.press("down")
        await pilot.pause(0.2)
        assert screen.view.id == 1 and "0.900 ± 0.010" in text_of(screen.query_one("#bench-aggregates"))
