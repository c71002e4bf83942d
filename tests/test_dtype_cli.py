"""`--dtype` on init / run / eval / bench and the up-front refusals: an unknown dtype, a dtype the device
cannot run, and a device with less free memory than the memory plan expects are each one line with a
non-zero exit, before any model loads or job is claimed, and nothing is written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from refact_tui.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(r, *texts) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    for text in texts:
        assert text in lines[0], lines[0]


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, model_dir):
    """A float16 workspace with one queued (never run) edit."""
    root = tmp_path_factory.mktemp("dtype-cli") / "w"
    r = invoke("--workspace", root, "init", "--model", model_dir, "--dtype", "float16")
    assert r.exit_code == 0 and "dtype float16" in r.stdout, r.output
    r = invoke("--workspace", root, "queue", "add", "--prompt", "A photo of a cat", "--source", "cat",
               "--target", "dog", "--layer", "2")
    assert r.exit_code == 0, r.output
    return root


def queued_untouched(root) -> None:
    """The one job is still queued and was never attempted (nothing was claimed)."""
    from store.db import open_db
    from store.jobs import list_jobs

    db = open_db(root / "refact.db")
    try:
        [job] = list_jobs(db)
        assert (str(job.state), job.attempts) == ("queued", 0)
    finally:
        db.close()


def test_init_stores_the_dtype_as_the_workspace_default(ws_root, model_dir):
    from refact_tui.services.working_model import hash_dtype, load_dtype
    from refact_tui.services.workspace import Workspace
    from store.base_models import get_base_model

    with Workspace.open(ws_root, read_only=True) as ws:
        base = get_base_model(ws.db, ws.history().base_model_id)
        assert (base.dtype, load_dtype(ws), hash_dtype(base.encoder_hash)) == ("float16", "float16", "float16")
        ws.dtype = "bfloat16"  # a command's --dtype overrides it for that command
        assert load_dtype(ws) == "bfloat16"


def test_unknown_dtype_is_one_line_and_nothing_is_written(ws_root, tmp_path, model_dir):
    r = invoke("--workspace", tmp_path / "new", "init", "--model", model_dir, "--dtype", "int8")
    one_line(r, "unknown dtype 'int8'", "float32, float16, bfloat16")
    assert not (tmp_path / "new").exists()
    for cmd in (["run", "--device", "cpu"], ["eval", "--text-only", "--device", "cpu"]):
        one_line(invoke("--workspace", ws_root, *cmd, "--dtype", "fp8"), "unknown dtype 'fp8'")
    queued_untouched(ws_root)


def fake_gpu_without_bf16(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")


def test_bf16_on_a_gpu_without_it_is_one_line_before_any_claim(ws_root, monkeypatch, tmp_path):
    fake_gpu_without_bf16(monkeypatch)
    one_line(invoke("--workspace", ws_root, "run", "--device", "cuda", "--dtype", "bfloat16"),
             "Tesla T4 cannot run bfloat16", "--dtype float16")
    one_line(invoke("--workspace", ws_root, "eval", "--text-only", "--device", "cuda", "--dtype", "bfloat16"),
             "cannot run bfloat16")
    bench = tmp_path / "rows.jsonl"
    bench.write_text('{"prompt": "A photo of a cat", "source": "cat", "target": "dog"}\n')
    one_line(invoke("--workspace", ws_root, "bench", bench, "--text-only", "--device", "cuda", "--dtype", "bfloat16"),
             "cannot run bfloat16")
    queued_untouched(ws_root)


def test_a_device_too_small_for_the_plan_is_refused_in_one_line_with_nothing_claimed(ws_root, monkeypatch, tmp_path,
                                                                                    model_dir):
    import refact_tui.services.plan as plan

    seen = []

    def tiny_host(device):
        seen.append(device)
        return 4096  # bytes free: less than any model

    monkeypatch.setattr(plan, "available_memory", tiny_host)
    need = plan.size_text(plan.plan_model(model_dir, "float16").peaks[plan.EDIT])  # the workspace's default dtype
    one_line(invoke("--workspace", ws_root, "run", "--device", "cpu"), "edit of", f"in float16 needs about {need} of "
             "host memory", "only 4.00 KiB is free")
    one_line(invoke("--workspace", ws_root, "run", "--device", "cpu", "--batch", "2"), "batch of 2 of")
    one_line(invoke("--workspace", ws_root, "eval", "--text-only", "--device", "cpu"), "edit of")
    one_line(invoke("--workspace", ws_root, "eval", "--device", "cpu", "--dtype", "float32"),
             "image eval of", "in float32", "--dtype")
    bench = tmp_path / "rows.jsonl"
    bench.write_text('{"prompt": "A photo of a cat", "source": "cat", "target": "dog"}\n')
    one_line(invoke("--workspace", ws_root, "bench", bench, "--text-only", "--device", "cpu"), "bench of")
    assert set(seen) == {"cpu"}
    queued_untouched(ws_root)


def test_the_plan_check_passes_with_room_and_uses_the_gpu_figure_on_cuda(ws_root):
    from refact_tui.services.plan import EDIT, MemoryPlanError, check_fits, plan_model
    from refact_tui.services.runner import check_run_options
    from refact_tui.services.workspace import Workspace
    from store.base_models import get_base_model

    with Workspace.open(ws_root, read_only=True) as ws:
        check_run_options(ws, "cpu", dtype="bfloat16", memory=lambda device: 1 << 40)  # proceeds
        path = get_base_model(ws.db, ws.history().base_model_id).path
    p = plan_model(path, "float16")
    # the host figure counts the fp32 files read while converting; the GPU figure only what moves there
    assert p.peaks[EDIT] > p.device_peaks[EDIT] > 0
    check_fits(p, EDIT, "cuda:0", lambda d: p.device_peaks[EDIT])  # exactly enough
    with pytest.raises(MemoryPlanError, match="GPU memory on cuda:0"):
        check_fits(p, EDIT, "cuda:0", lambda d: p.device_peaks[EDIT] - 1)
    check_fits(p, EDIT, "cpu", lambda d: None)  # unknown free memory refuses nothing


def test_available_memory_reads_the_host(monkeypatch):
    from refact_tui.services.plan import available_memory

    free = available_memory("cpu")
    assert free is not None and 0 < free < 1 << 50
