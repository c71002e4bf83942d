"""Workspace services: init from a model, open, resolve the root, unusable folders."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from refact_tui.services.workspace import (
    BaseModelInfo,
    Workspace,
    WorkspaceError,
    create_workspace,
    init_workspace,
    resolve_root,
)
from store.base_models import get_base_model
from store.histories import list_histories
from store.integrity import integrity_check

HAVE_MODELS = all(importlib.util.find_spec(m) is not None for m in ("engine.models", "engine.builder"))
INFO = BaseModelInfo("tiny", "/models/tiny", "sd-pipeline", "clip", "f" * 64, {"num_layers": 4})


def test_create_and_open_workspace(tmp_path):
    ws = create_workspace(tmp_path / "ws", INFO, history="exp")
    for d in (ws.deltas_dir, ws.images_dir, ws.stats_dir, ws.exports_dir):
        assert d.is_dir() and d.parent == ws.root
    assert ws.history().name == "exp" and ws.history().head_seq == 0
    ws.close()

    again = Workspace.open(tmp_path / "ws")
    base = get_base_model(again.db, again.history().base_model_id)
    assert (base.encoder_hash, base.kind, base.config) == ("f" * 64, "sd-pipeline", {"num_layers": 4})
    assert again.relative(again.deltas_dir / "x.safetensors") == "deltas/x.safetensors"
    assert again.resolve("deltas/x.safetensors") == again.deltas_dir / "x.safetensors"
    assert integrity_check(again.db) == []
    again.close()

    with pytest.raises(WorkspaceError, match="already exists"):
        create_workspace(tmp_path / "ws", INFO)


def test_open_missing_workspace_names_the_fix(tmp_path):
    with pytest.raises(WorkspaceError) as info:
        Workspace.open(tmp_path / "nowhere")
    assert str(info.value) == f"no workspace at {tmp_path / 'nowhere'}; run `refact init --model PATH` first"


def test_resolve_root(tmp_path, monkeypatch):
    monkeypatch.delenv("REFACT_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_root(None) == tmp_path / "refact-workspace"
    monkeypatch.setenv("REFACT_WORKSPACE", str(tmp_path / "env-ws"))
    assert resolve_root(None) == tmp_path / "env-ws"
    assert resolve_root(tmp_path / "opt") == tmp_path / "opt"  # the option wins
    assert resolve_root("rel") == tmp_path / "rel"


def test_workspace_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(WorkspaceError, match="cannot create the workspace at .*writable --workspace"):
        create_workspace(blocker / "ws", INFO)


def test_read_only_workspace_folder_is_a_workspace_error(tmp_path):
    create_workspace(tmp_path / "ws", INFO).close()
    folder = tmp_path / "ws"
    folder.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:  # root ignores permissions; an immutable folder stops it
        try:
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        except FileNotFoundError:
            immutable = False
        if not immutable:
            folder.chmod(0o755)
            pytest.skip("cannot make a folder read-only for root here")
    try:
        with pytest.raises(WorkspaceError) as info:
            Workspace.open(folder)
        assert str(folder) in str(info.value) and "\n" not in str(info.value)
        assert info.value.__cause__ is None  # no sqlite3 error chained for a traceback
        with pytest.raises(WorkspaceError):
            create_workspace(folder / "inner", INFO)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


@pytest.mark.skipif(not HAVE_MODELS, reason="engine.models / engine.builder not written yet")
def test_init_workspace_registers_the_loaded_model(tmp_path, tmp_path_factory):
    from fixtures_models import tiny_pipeline_dir

    from engine.models import load_model

    model_dir = tiny_pipeline_dir(tmp_path_factory)
    ws = init_workspace(tmp_path / "ws", model_dir)
    base = get_base_model(ws.db, ws.history().base_model_id)
    expected = load_model(model_dir, device="cpu", with_pipeline=False)
    assert base.encoder_hash == expected.encoder_hash()
    assert (base.kind, base.encoder_family) == ("sd-pipeline", "clip")
    assert base.config["num_layers"] == expected.adapter.num_layers
    assert Path(base.path) == Path(expected.path)
    assert [h.name for h in list_histories(ws.db)] == ["main"]
    ws.close()


@pytest.mark.skipif(not HAVE_MODELS, reason="engine.models not written yet")
def test_init_with_a_missing_model_leaves_nothing_behind(tmp_path):
    from engine.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        init_workspace(tmp_path / "ws", tmp_path / "no-such-model")
    assert not (tmp_path / "ws").exists()
