"""Histories across load dtypes (services/working_model.py's weights-hash policy): a history applied in
one dtype rebuilds in another without a false tamper error, the text-space metrics of a short history
edited at fp16 / bf16 match fp32 within a stated tolerance, and a different base is still refused
whatever the dtype."""

from __future__ import annotations

import shutil

import pytest
import torch
from worker_helpers import new_workspace, queue, sample_requests

# |metric(dtype) - metric(fp32)| of a 2-edit history on the tiny SD1 build, edited and evaluated in that
# dtype. efficacy / generality / specificity / generality_75 are fractions of probes (measured: equal in
# every dtype; the bound leaves room for one probe of ten flipping); p_target, the edit prompt's mean
# P(target), is continuous (measured: |fp16 - fp32| <= 2e-4, |bf16 - fp32| <= 2e-4).
TEXT_TOL = {"efficacy": 0.1, "generality": 0.1, "specificity": 0.1, "generality_75": 0.1, "p_target": 5e-3}
TEXT_METRICS = tuple(TEXT_TOL)


def edited_workspace(root, model_dir, dtype):
    from refact_tui.services.runner import run_worker

    ws = new_workspace(root, model_dir)
    queue(ws, sample_requests(2))
    assert run_worker(ws, device="cpu", dtype=dtype).done == 2
    return ws


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory, model_dir):
    """One workspace per dtype (default load: fp32, as the tiny build stores it), each with the same two
    edits run in that dtype."""
    made = {d: edited_workspace(tmp_path_factory.mktemp(f"ws-{d}") / "w", model_dir, d)
            for d in (None, "float16", "bfloat16")}
    yield made
    for ws in made.values():
        ws.close()


def text_metrics(ws, dtype):
    from refact_tui.services.eval_text import run_text_eval

    ws.dtype = dtype
    try:
        summary = run_text_eval(ws, history=True, device="cpu")
    finally:
        ws.dtype = None
    return {e: {k: v for k, v in m.items() if k in TEXT_METRICS} for e, m in summary.metrics.items()
            if e is not None}


def test_edits_record_their_hash_with_the_dtype_they_were_applied_in(workspaces):
    from refact_tui.services.working_model import hash_dtype
    from store.edits import applied_edits

    for dtype, ws in workspaces.items():
        edits = applied_edits(ws.db, ws.history().id, 2)
        assert [hash_dtype(e.weights_hash) for e in edits] == [dtype, dtype]


@pytest.mark.parametrize("applied", [None, "bfloat16"])
def test_a_history_rebuilds_in_every_dtype_without_a_tamper_error(workspaces, applied):
    from refact_tui.services.working_model import load_history_model
    from store.edits import applied_edits

    ws = workspaces[applied]
    recorded = applied_edits(ws.db, ws.history().id, 2)[-1].weights_hash
    for dtype in ("float32", "float16", "bfloat16", None):
        state = load_history_model(ws, device="cpu", dtype=dtype)
        want = getattr(torch, dtype or "float32")
        assert state.model.text_encoder.get_input_embeddings().weight.dtype == want
        assert state.base_encoder_hash == state.base.encoder_hash  # deltas keep naming the registered base
        # in the dtype it was applied in, the rebuild is bit-exact: the recorded hash itself
        assert (state.weights_hash == recorded) == (dtype == applied)


def test_text_metrics_of_a_history_edited_at_fp16_and_bf16_match_fp32(workspaces):
    want = text_metrics(workspaces[None], None)
    assert len(want) == 2 and all(set(m) == set(TEXT_METRICS) for m in want.values())
    for dtype in ("float16", "bfloat16"):
        got = text_metrics(workspaces[dtype], dtype)
        for (e_want, m_want), (e_got, m_got) in zip(sorted(want.items()), sorted(got.items())):
            for name in TEXT_METRICS:
                assert abs(m_got[name] - m_want[name]) <= TEXT_TOL[name], (dtype, name, m_got[name], m_want[name])


def test_a_history_applied_at_bf16_evaluates_at_fp32_like_the_fp32_history(workspaces):
    want = text_metrics(workspaces[None], None)
    got = text_metrics(workspaces["bfloat16"], "float32")
    for (_, m_want), (_, m_got) in zip(sorted(want.items()), sorted(got.items())):
        for name in TEXT_METRICS:
            assert abs(m_got[name] - m_want[name]) <= TEXT_TOL[name], (name, m_got[name], m_want[name])


def test_rollback_and_rollforward_of_a_bf16_history_check_its_bf16_hashes(workspaces):
    from refact_tui.services.history import rollback, rollforward
    from store.edits import applied_edits

    ws = workspaces["bfloat16"]
    recorded = [e.weights_hash for e in applied_edits(ws.db, ws.history().id, 2)]
    rollback(ws, 1)  # rebuilt in the workspace's load dtype (as stored): no false tamper error
    assert ws.history().head_seq == 1
    result = rollforward(ws, 2)  # rebuilt in bf16, the dtype of edit 2's hash, and compared bit for bit
    assert (ws.history().head_seq, result.restored) == (2, 1)
    assert [e.weights_hash for e in applied_edits(ws.db, ws.history().id, 2)] == recorded


def copy_of(model_dir, dest):
    shutil.copytree(model_dir, dest)
    return dest


def swap_text_encoder(folder, pipeline_dir_for):
    """Replace the text encoder's weights with another seed's (same shapes, different values)."""
    other = pipeline_dir_for("sd1", 1)
    for f in (folder / "text_encoder").glob("*.safetensors"):
        shutil.copy(other / "text_encoder" / f.name, f)


def test_a_different_base_is_refused_in_every_dtype(tmp_path, model_dir, pipeline_dir_for):
    from engine.errors import DeltaIntegrityError
    from refact_tui.services.working_model import load_history_model

    base = copy_of(model_dir, tmp_path / "base")
    ws = new_workspace(tmp_path / "w", base)
    try:
        load_history_model(ws, device="cpu", dtype="bfloat16")  # the same files: accepted in another dtype
        swap_text_encoder(base, pipeline_dir_for)
        for dtype in (None, "float32", "bfloat16"):
            with pytest.raises(DeltaIntegrityError, match="changed since it was registered"):
                load_history_model(ws, device="cpu", dtype=dtype)
    finally:
        ws.close()


def test_an_older_base_gets_its_files_hash_at_the_first_verified_load(tmp_path, model_dir, pipeline_dir_for):
    import sqlite3

    from engine.errors import DeltaIntegrityError
    from refact_tui.services.working_model import load_history_model
    from refact_tui.services.workspace import Workspace
    from store.base_models import get_base_model

    base = copy_of(model_dir, tmp_path / "base")
    new_workspace(tmp_path / "w", base).close()
    raw = sqlite3.connect(tmp_path / "w" / "refact.db")  # as a workspace registered before file hashes
    with raw:
        raw.execute("UPDATE base_models SET files_hash = NULL, dtype = NULL")
    raw.close()
    with Workspace.open(tmp_path / "w") as ws:
        with pytest.raises(DeltaIntegrityError, match="registered before file hashes were kept"):
            load_history_model(ws, device="cpu", dtype="float16")
        load_history_model(ws, device="cpu")  # verified in its recorded dtype: records the files hash
        row = get_base_model(ws.db, ws.history().base_model_id)
        assert row.files_hash is not None and len(row.files_hash) == 64
        assert load_history_model(ws, device="cpu", dtype="float16").dtype == "float16"
        swap_text_encoder(base, pipeline_dir_for)
        with pytest.raises(DeltaIntegrityError, match="changed since it was registered"):
            load_history_model(ws, device="cpu", dtype="float16")
