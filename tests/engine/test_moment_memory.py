"""Second moments at LLM widths: chunked fp32 storage, the memory figure and its up-front refusal,
the low-rank + diagonal solve, and the corpus going through the slot's template."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import engine.covariance as cov
from engine.admission import MomentMemory, check_moment_memory
from engine.covariance import SecondMomentStore, accumulate, collect_second_moment, moment_memory, read_corpus
from engine.errors import EngineError, InsertionRefusedError
from engine.methods.refact.keys import left_vector
from engine.methods.refact.linalg import _check_workspace, solve

GIB = 2**30


def keys_with_spectrum(n: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random key rows whose second moment has a decaying spectrum (as trained MLP activations do)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -3, width, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=torch.float64))[0]
    return (torch.randn(n, width, generator=gen, dtype=torch.float64) * scale) @ basis.T


def test_chunked_fp32_accumulation_equals_one_shot():
    keys = keys_with_spectrum(1500, 96).float()
    one_shot = keys.double().T @ keys.double()
    for dtype in (torch.float32, torch.float64):
        acc = torch.zeros(96, 96, dtype=dtype)
        for start in range(0, 1500, 100):  # 15 batches, 7-column blocks
            accumulate(acc, keys[start : start + 100], column_block=7)
        assert acc.dtype == dtype
        assert float((acc.double() - one_shot).norm() / one_shot.norm()) < 1e-6


def test_collection_stores_wide_keys_in_fp32_and_matches_fp64(tiny_clip, corpus_file, monkeypatch):
    lines = read_corpus(corpus_file, 40)
    ref, n_ref = collect_second_moment(tiny_clip.adapter, tiny_clip.tokenizer, lines, 1, batch_tokens=100,
                                       dtype=torch.float64)
    monkeypatch.setattr(cov, "FP32_STORAGE_FROM", 64)  # the tiny key (64 wide) takes the wide-key path
    got, n = collect_second_moment(tiny_clip.adapter, tiny_clip.tokenizer, lines, 1, batch_tokens=100, column_block=5)
    assert got.dtype == torch.float32 and n == n_ref
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-6


def test_fp32_storage_moves_u_by_less_than_the_stated_bound():
    """The stated bound: |u32 - u64| <= 6e-8 * kappa, fp32's unit roundoff times the condition number
    of C + ridge (first-order perturbation of the solve); measured 1.2e-9 to 3e-9 * kappa here."""
    keys = keys_with_spectrum(2048, 256)
    c64 = keys.T @ keys / 2048
    k = keys[:8].mean(dim=0)
    for ridge in (1e-4, 1e-2):
        eig = torch.linalg.eigvalsh(c64 + ridge * c64.diagonal().mean() * torch.eye(256, dtype=torch.float64))
        kappa = float(eig.max() / eig.min())
        u64, u32 = left_vector(c64, k, ridge=ridge), left_vector(c64.float(), k, ridge=ridge)
        err = float((u32 - u64).norm())
        assert 1e-7 < err < 6e-8 * kappa and float(u32 @ u64) > 1 - 1e-6
    assert kappa < 2e3 and err < 1e-5  # ridge 1e-2: kappa 1.4e3


def test_low_rank_at_full_rank_equals_the_dense_solve_and_truncated_is_close():
    keys = keys_with_spectrum(1024, 128)
    c = keys.T @ keys / 1024
    rhs = keys[:3].T
    dense = solve(c, rhs, ridge=1e-3)
    full = solve(c, rhs, ridge=1e-3, rank=128)
    assert float((full - dense).norm() / dense.norm()) < 1e-8
    k = keys[:8].mean(dim=0)
    u_dense, u_low = left_vector(c, k, 1e-3), left_vector(c, k, 1e-3, rank=64)
    # an approximation, not the dense u: C^-1 weighs the small-eigenvalue directions that the diagonal
    # stands in for (a cosine of 0.73 on this C, whose spectrum spans six decades)
    assert 0.5 < float(u_low @ u_dense) < 1 - 1e-6


def test_low_rank_edit_still_inserts_v_star_exactly(tiny_clip, stats_store, corpus_file):
    from engine.methods.refact.edit import apply_edit
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.request import EditRequest

    hp = ReFACTHParams(layer=0, lr=0.5, weight_decay=0.0, max_steps=5, moment_rank=16, ridge=1e-3)
    assert hp.to_dict()["moment_rank"] == 16 and "moment_rank" not in ReFACTHParams().to_dict()
    req = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
    res = apply_edit(tiny_clip, req, hp, moments=stats_store, corpus=corpus_file)
    t = res.tensors
    with torch.no_grad():
        got = tiny_clip.adapter.fc2(0)(t["k_e"])
    assert float((got - t["v_star"]).norm() / t["v_star"].norm()) < 1e-4
    c = stats_store.get(tiny_clip, 0, corpus=corpus_file)
    dense = left_vector(c, t["k_star"], 1e-3)
    assert 0.5 < float(t["u"] @ dense) < 1 - 1e-6  # u came from the rank-16 solve


def test_the_dense_factor_is_the_one_fp64_workspace_and_c_is_untouched():
    from engine.methods.refact.linalg import CHOLESKY_CACHE, cholesky

    keys = keys_with_spectrum(512, 64)
    c32 = (keys.T @ keys / 512).float()
    before = c32.clone()
    CHOLESKY_CACHE.clear()
    chol = cholesky(c32, 1e-3)
    assert chol.dtype == torch.float64 and chol.untyped_storage().nbytes() == 64 * 64 * 8  # width² x 8, no more
    assert torch.equal(chol, chol.tril()) and torch.equal(c32, before)
    target = c32.double() + 1e-3 * c32.double().diagonal().mean() * torch.eye(64, dtype=torch.float64)
    assert float((chol @ chol.T - target).abs().max()) < 1e-12


def test_memory_figure_is_width_squared_times_bytes_plus_the_solve():
    wide, narrow = moment_memory(32768), moment_memory(3072)
    assert (wide.storage, wide.store, wide.solve) == ("float32", 32768**2 * 4, 32768**2 * 8)
    assert wide.total == 12 * 32768**2  # 12.9 GB: 4.3 GB C + 8.6 GB fp64 factor
    assert (narrow.storage, narrow.total) == ("float64", 16 * 3072**2)
    low = moment_memory(32768, rank=256)
    assert low.solve == 32768 * (3 * 256 + 4) * 8 + 256 * 256 * 8 and low.total < wide.store * 1.1
    assert wide.line("cpu", 20 * GIB) == (
        "second moment of a 32768-wide key: 12.0 GiB on cpu (20.0 GiB free): fp32 C 4.0 GiB + fp64 solve workspace 8.0 GiB")


def test_too_small_a_budget_is_refused_in_one_line():
    cpu, cuda = torch.device("cpu"), SimpleNamespace(type="cuda")
    with pytest.raises(EngineError) as err:
        check_moment_memory(moment_memory(32768), cpu, free_bytes=8 * GIB)
    assert str(err.value) == (
        "the second moment of a 32768-wide key needs 12.0 GiB (fp32 C 4.0 GiB + fp64 solve workspace 8.0 GiB) but "
        "cpu has 8.0 GiB free; use a device with more memory or a low-rank C (--moment-rank 256)")
    assert check_moment_memory(moment_memory(32768, 256), cpu, free_bytes=8 * GIB) < 5 * GIB
    # on CUDA the device holds the accumulator, the host C and its factor
    with pytest.raises(EngineError, match=r"needs 4\.0 GiB \(the fp32 accumulator\) but cuda has 2\.0 GiB free"):
        check_moment_memory(moment_memory(32768), cuda, free_bytes=2 * GIB, host_free_bytes=64 * GIB)
    with pytest.raises(EngineError, match=r"needs 12\.0 GiB .* but cpu has 10\.0 GiB free"):
        check_moment_memory(moment_memory(32768), cuda, free_bytes=40 * GIB, host_free_bytes=10 * GIB)
    with pytest.raises(InsertionRefusedError, match=r"^solving against a 32768-wide C needs an fp64 workspace of "
                                                    r"8\.0 GiB but the host has 1\.0 GiB free; .*--moment-rank 256"):
        _check_workspace(32768, free_bytes=GIB)
    assert MomentMemory(100).total == 100 * 100 * 16


def test_store_states_the_figure_then_refuses_before_collecting(tiny_clip, corpus_file, tmp_path, monkeypatch):
    calls, seen = [], []
    monkeypatch.setattr(cov, "collect_second_moment", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(cov, "free_memory", lambda device: 1000)  # 64 x 64 fp64 C + factor = 65536 bytes
    store = SecondMomentStore(tmp_path / "stats")
    with pytest.raises(EngineError, match=r"^the second moment of a 64-wide key needs 0\.1 MiB .* 0\.0 MiB free"):
        store.get(tiny_clip, 1, corpus=corpus_file, progress=seen.append)
    assert calls == [] and seen == [] and not (tmp_path / "stats").exists()

    monkeypatch.setattr(cov, "free_memory", lambda device: 64 * GIB)
    monkeypatch.setattr(cov, "STATE_MEMORY_FROM", 0)
    monkeypatch.setattr(cov, "collect_second_moment", lambda *a, **k: (torch.eye(64, dtype=torch.float64), 10))
    store.get(tiny_clip, 1, corpus=corpus_file, progress=seen.append)
    assert [(p.done, p.detail) for p in seen] == [
        (0, "second moment of a 64-wide key: 0.1 MiB on cpu (64.0 GiB free): fp64 C 0.0 MiB + fp64 solve workspace 0.0 MiB")]


def test_llm_corpus_goes_through_the_slot_template():
    """Lumina 2's slot: every corpus line gets the system prompt, as its prompts do, and C's rows are
    the keys of the templated sequence (the prompt's own tokens and the template's, no padding)."""
    from engine.builder import make_text_encoder, pipeline_configs
    from engine.builder.pipelines import make_tokenizer
    from engine.models import make_slot
    from engine.slots import LUMINA2_SYSTEM_PROMPT

    spec = pipeline_configs("tiny", "lumina2").encoders["text_encoder"]
    torch.manual_seed(0)
    raw = make_tokenizer(spec.tokenizer)
    slot = make_slot("text_encoder", make_text_encoder(spec), raw, "lumina2", None, None)
    lines = ["a red dog in a park", "portrait of the king", "a bowl of fruit"]
    got, n = collect_second_moment(slot.adapter, slot.tokenizer, lines, 1, batch_tokens=64)
    keys = []
    handle = slot.adapter.fc2(1).register_forward_pre_hook(lambda m, a: keys.append(a[0][0]))
    with torch.no_grad():
        for line in lines:  # what Lumina2Pipeline.encode_prompt feeds the encoder, one prompt at a time
            ids = raw(LUMINA2_SYSTEM_PROMPT + " <Prompt Start> " + line, return_tensors="pt")
            slot.text_encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
    handle.remove()
    k = torch.cat(keys).double()
    assert n == k.shape[0] > 3 * len(raw(LUMINA2_SYSTEM_PROMPT)["input_ids"])
    assert float((got.double() - k.T @ k / n).norm() / got.double().norm()) < 1e-5
