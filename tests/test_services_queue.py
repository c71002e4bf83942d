"""Queue services: validation on add, all-or-nothing imports, duplicates, queue management."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engine.methods.refact.hparams import HParamsError, ReFACTHParams
from engine.request import EditRequest, RequestError
from refact_tui.services import queue
from refact_tui.services.workspace import BaseModelInfo, create_workspace
from store.events import tail_events
from store.histories import create_history, set_current_history

HAVE_IMPORTERS = importlib.util.find_spec("engine.importers") is not None
HP = ReFACTHParams(layer=1, max_steps=5)


@pytest.fixture
def ws(tmp_path):
    info = BaseModelInfo("tiny", "/models/tiny", "sd-pipeline", "clip", "e" * 64, {"num_layers": 4})
    w = create_workspace(tmp_path / "ws", info)
    yield w
    w.close()


def _req(i: int, **over) -> EditRequest:
    fields = dict(prompt=f"The king of land {i}", source=f"The king of land {i}", target=f"A queen {i}")
    fields.update(over)
    return EditRequest(**fields)


def _write_jsonl(path: Path, items: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in items) + "\n",
                    encoding="utf-8")
    return path


def test_add_edit_validates_and_queues(ws):
    job = queue.add_edit(ws, _req(1), HP)
    assert (job.state, job.request, job.hparams, job.history_id) == ("queued", _req(1), HP, ws.history().id)
    with pytest.raises(RequestError, match="does not occur in prompt"):
        queue.add_edit(ws, _req(2, subject="emperor"), HP)
    with pytest.raises(RequestError, match="target is empty"):
        queue.add_edit(ws, _req(3, target="  "), HP)
    with pytest.raises(HParamsError, match="layer 7 is out of range.*4 layers"):
        queue.add_edit(ws, _req(4), ReFACTHParams(layer=7))  # no layer 7 in a 4-layer encoder
    assert [j.id for j in queue.list_queue(ws)] == [job.id]  # nothing half-added
    # without hparams the workspace default moves the paper's layer 7 into range (middle layer)
    default_job = queue.add_edit(ws, _req(5))
    assert default_job.hparams == ReFACTHParams(layer=2)
    assert queue.add_edit(ws, _req(6), {"max_steps": 9}).hparams == ReFACTHParams(layer=2, max_steps=9)
    assert "queued job" in tail_events(ws.db)[-1].message


def test_queue_management_round_trip(ws):
    a, b, c = (queue.add_edit(ws, _req(i), HP).id for i in range(3))
    queue.move(ws, c, 0)
    assert [j.id for j in queue.list_queue(ws)] == [c, a, b]
    assert queue.cancel(ws, a).state == "cancelled"
    assert queue.retry(ws, a).state == "queued"
    assert [j.id for j in queue.list_queue(ws, states=["queued"])] == [c, b, a]
    queue.remove(ws, b)
    assert [j.id for j in queue.list_queue(ws)] == [c, a]

    # Another history's jobs are not in this history's queue and survive its clear().
    other = create_history(ws.db, ws.history().base_model_id, "other")
    set_current_history(ws.db, other.id)
    d = queue.add_edit(ws, _req(9), HP).id
    set_current_history(ws.db, 1)
    assert [j.id for j in queue.list_queue(ws, all_histories=True)] == [c, a, d]
    assert queue.clear(ws) == 2
    assert [j.id for j in queue.list_queue(ws, all_histories=True)] == [d]


@pytest.mark.skipif(not HAVE_IMPORTERS, reason="engine.importers not written yet")
def test_import_is_all_or_nothing_unless_skip_invalid(ws, tmp_path):
    path = _write_jsonl(tmp_path / "edits.jsonl", [
        _req(1).to_dict(),
        {"prompt": "a cat", "source": "a cat"},  # no target
        _req(2).to_dict(),
        "{not json",
    ])
    report = queue.import_requests(ws, path, hparams=HP)
    assert report.added == [] and len(report.errors) == 2
    assert queue.list_queue(ws) == []
    assert any("row 2" in str(e) and "target" in str(e) for e in report.errors)
    assert "nothing imported" in report.summary()

    report = queue.import_requests(ws, path, hparams=HP, skip_invalid=True)
    assert [j.request for j in report.added] == [_req(1), _req(2)]
    assert report.skipped_invalid == 2
    assert [j.request for j in queue.list_queue(ws)] == [_req(1), _req(2)]
    assert all(j.hparams == HP for j in report.added)


@pytest.mark.skipif(not HAVE_IMPORTERS, reason="engine.importers not written yet")
def test_import_reports_and_skips_duplicates(ws, tmp_path):
    queue.add_edit(ws, _req(1), HP)
    path = _write_jsonl(tmp_path / "dups.jsonl", [
        _req(1).to_dict(),  # already queued
        _req(2).to_dict(),
        _req(2, name="again").to_dict(),  # repeat within the file
        {"prompt": "Citroën car", "source": "Citroën car", "target": "a red Citroën"},
    ])
    report = queue.import_requests(ws, path, hparams=HP)
    assert report.errors == []
    assert [j.request.prompt for j in report.added] == ["The king of land 2", "Citroën car"]
    assert len(report.duplicates) == 2
    assert any("row 3" in d and "row 2" in d for d in report.duplicates)
    assert any("row 1" in d and "already queued" in d for d in report.duplicates)
    assert [j.request.prompt for j in queue.list_queue(ws)] == [
        "The king of land 1", "The king of land 2", "Citroën car"
    ]
    forced = queue.import_requests(ws, path, hparams=HP, allow_duplicates=True)
    assert len(forced.added) == 3  # only the in-file repeat is still left out


@pytest.mark.skipif(not HAVE_IMPORTERS, reason="engine.importers not written yet")
def test_import_checks_hparams_before_reading(ws, tmp_path):
    path = _write_jsonl(tmp_path / "one.jsonl", [_req(1).to_dict()])
    with pytest.raises(HParamsError, match="out of range"):
        queue.import_requests(ws, path, hparams=ReFACTHParams(layer=12))
    assert queue.list_queue(ws) == []
