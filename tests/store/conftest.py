"""Fixtures for the store tests: a fresh migrated database with one base model and one history."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest
from store.base_models import register_base_model
from store.db import open_db
from store.histories import create_history, set_current_history


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "refact.db"


@pytest.fixture
def db(db_path: Path):
    handle = open_db(db_path, create=True)
    yield handle
    handle.close()


@pytest.fixture
def history(db):
    base = register_base_model(db, "tiny", "/models/tiny", "sd-pipeline", "clip", "abc123", {"num_layers": 2})
    h = create_history(db, base.id, "main")
    set_current_history(db, h.id)
    return h


@pytest.fixture
def hparams() -> ReFACTHParams:
    return ReFACTHParams(layer=1, max_steps=5)


def _request(i: int) -> EditRequest:
    return EditRequest(prompt=f"person {i}", source=f"person {i}", target=f"robot {i}")


@pytest.fixture
def make_request():
    """Factory of distinct valid requests: make_request(i)."""
    return _request
