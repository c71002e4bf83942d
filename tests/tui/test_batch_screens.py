"""Live shows a running batch's requests with P(target) bars; History shows a batch edit's requests."""

from __future__ import annotations

from store.db import open_db
from store.steps import StepWriter
from tests.tui.test_app_pilot import make_app, on_screen, select_row, text_of


def make_batch(root, S) -> list[int]:
    """Turn the running job and the two queued ones into one running batch with step rows."""
    db = open_db(root / "refact.db")
    try:
        ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state IN ('running', 'queued') ORDER BY position")]
        db.execute(f"UPDATE jobs SET state = 'running', attempts = 1, batch_token = 'tok123', started_at = ? "
                   f"WHERE id IN ({','.join('?' * len(ids))})", [S.T0, *ids])
        db.conn.commit()
    finally:
        db.close()
    others = [j for j in ids if j != 6]  # job 6 already has RUNNING_STEPS rows
    for k, job in enumerate(others):
        writer = StepWriter(root / "refact.db", job, 1)
        for i in range(4 if k else 30):  # the first converges (P > 0.9), the other is early on
            writer.add(S.curve(i, 40, 0))
        writer.close()
    return ids


async def test_live_shows_a_running_batch(sample_ws, S):
    ids = make_batch(sample_ws, S)
    app = make_app(sample_ws, S)
    async with on_screen(app, "2") as pilot:
        await pilot.pause(0.2)
        table = app.screen.query_one("#live-batch")
        assert table.display
        text = text_of(table)
        assert "batch tok123" in text and f"/{len(ids)} converged" in text
        assert "✓" in text and "█" in text
        loss = app.screen.query_one("#loss-plot")
        assert loss.xs == list(range(30))  # the aggregate curve spans the longest request


async def test_history_shows_a_batch_edits_requests(sample_ws, S):
    db = open_db(sample_ws / "refact.db")
    try:
        db.execute("UPDATE edits SET kind = 'batch' WHERE id = 2")
        for i, (prompt, target) in enumerate([("The Pope", "Benedict XVI"), ("The CEO of Apple", "Tim Cook")]):
            db.execute("INSERT INTO batch_requests (edit_id, idx, job_id, request_json, p_target, steps_run, early_stopped, "
                       "residual, metrics_json) VALUES (2, ?, NULL, ?, 0.95, 12, 1, 0.001, '{\"efficacy\": 1.0}')",
                       [i, '{"prompt": "%s", "source": "x", "target": "%s"}' % (prompt, target)])
        db.conn.commit()
    finally:
        db.close()
    app = make_app(sample_ws, S)
    async with on_screen(app, "4") as pilot:
        table = app.screen.query_one("#history-table")
        await select_row(pilot, table, 1)
        batch = app.screen.query_one("#detail-batch")
        assert batch.display
        text = text_of(batch)
        assert "batch of 2 requests" in text and "The Pope → Benedict XVI" in text and "0.950" in text
        await select_row(pilot, table, 0)
        assert not app.screen.query_one("#detail-batch").display
