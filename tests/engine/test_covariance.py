"""Second-moment collection and its memory/disk cache."""

from __future__ import annotations

import pytest
import torch

import engine.covariance as cov
from engine.covariance import SecondMomentStore, collect_second_moment, read_corpus, stats_key
from engine.errors import EngineError
from engine.methods.refact.keys import left_vector


def reference_second_moment(model, lines, layer):
    """Line by line, unpadded, via a hook on fc2's input: sum k k^T / N over every token."""
    adapter = model.adapter
    keys = []
    handle = adapter.fc2(layer).register_forward_hook(lambda m, i, o: keys.append(i[0][0]))
    with torch.no_grad():
        for line in lines:
            ids = model.tokenizer(line, truncation=True, max_length=77, return_tensors="pt")
            model.text_encoder(**ids)
    handle.remove()
    k = torch.cat(keys).double()
    return k.T @ k / k.shape[0], k.shape[0]


def test_collect_matches_line_by_line(tiny_clip, corpus_file):
    lines = read_corpus(corpus_file)
    seen = []
    mom2, n = collect_second_moment(tiny_clip.adapter, tiny_clip.tokenizer, lines, 1, batch_tokens=200, progress=seen.append)
    ref, n_ref = reference_second_moment(tiny_clip, lines, 1)
    assert n == n_ref == sum(len(tiny_clip.tokenizer(x)["input_ids"]) for x in lines)  # BOS/EOS in, pads out
    assert mom2.dtype == torch.float64
    assert float((mom2 - ref).norm() / ref.norm()) < 1e-6
    assert len(seen) > 3 and seen[-1].done == seen[-1].total == len(lines)  # many packed batches
    assert torch.linalg.eigvalsh(mom2).min() > 0  # full rank: usable for the solve


def test_store_caches_in_memory_and_on_disk(tiny_clip, corpus_file, tmp_path, monkeypatch):
    calls = []
    real = cov.collect_second_moment
    monkeypatch.setattr(cov, "collect_second_moment", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    store = SecondMomentStore(tmp_path / "stats")
    c1 = store.get(tiny_clip, 1, corpus=corpus_file)
    c2 = store.get(tiny_clip, 1, corpus=corpus_file)
    assert calls == [1] and c2 is c1

    fresh = SecondMomentStore(tmp_path / "stats")  # new process, same disk cache
    c3 = fresh.get(tiny_clip, 1, corpus=corpus_file)
    assert calls == [1] and torch.equal(c3, c1)

    entries = fresh.entries()
    assert len(entries) == 1
    e = entries[0]
    assert (e.layer, e.n_samples, e.family, e.module) == (1, "all", "clip", "encoder.layers.1.mlp.fc2")
    assert e.upstream_hash == tiny_clip.adapter.upstream_hash(1) and e.n_tokens > 500
    assert e.path.name == f"{stats_key(e.upstream_hash, 1, e.corpus_sha256, None)}.safetensors"

    with torch.no_grad():
        tiny_clip.adapter.fc2(1).weight.mul_(2.0)  # not upstream of layer 1's key: still a hit
    fresh.get(tiny_clip, 1, corpus=corpus_file)
    assert calls == [1]
    with torch.no_grad():
        tiny_clip.adapter.fc2(0).weight.mul_(1.5)  # upstream: miss, recomputed
    c4 = fresh.get(tiny_clip, 1, corpus=corpus_file)
    assert calls == [1, 1] and not torch.equal(c4, c1)
    assert len(fresh.entries()) == 2

    fresh.get(tiny_clip, 1, corpus=corpus_file, n_samples=40)  # another subset: another key
    assert calls == [1, 1, 1]


def test_read_positions_take_every_padded_position_the_pipeline_feeds(tiny_clip, corpus_file, tmp_path):
    """Positions.READ: each line padded to 77 with the tokenizer's pad token, no mask, all 77 rows;
    the attended C (the paper's, the default) is unchanged and cached under its own key."""
    from engine.covariance import Positions

    lines = read_corpus(corpus_file, 12)
    tok, adapter = tiny_clip.tokenizer, tiny_clip.adapter
    keys = []
    handle = adapter.fc2(1).register_forward_hook(lambda m, i, o: keys.append(i[0][0]))
    with torch.no_grad():
        for line in lines:  # what an SD pipeline's encode_prompt feeds the encoder
            ids = tok(line, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            tiny_clip.text_encoder(input_ids=ids)
    handle.remove()
    k = torch.cat(keys).double()
    ref = k.T @ k / k.shape[0]
    read, n = collect_second_moment(adapter, tok, lines, 1, batch_tokens=200, positions=Positions.READ)
    assert n == 77 * len(lines) and float((read - ref).norm() / ref.norm()) < 1e-6
    attended, n_att = collect_second_moment(adapter, tok, lines, 1, batch_tokens=200)
    assert n_att == sum(len(tok(x)["input_ids"]) for x in lines) < n
    assert float((read - attended).norm() / attended.norm()) > 1e-2  # the padding rows change C
    plain = SecondMomentStore(tmp_path / "s").get(tiny_clip, 1, corpus=corpus_file, n_samples=12)
    store = SecondMomentStore(tmp_path / "s", positions=Positions.READ)
    got = store.get(tiny_clip, 1, corpus=corpus_file, n_samples=12)
    assert float((plain - attended).norm() / attended.norm()) < 1e-9 and float((got - read).norm() / read.norm()) < 1e-9
    assert sorted(e.mode for e in store.entries()) == ["longest", "longest+read"]


def test_subset_is_fixed_and_sized(corpus_file):
    a, b = read_corpus(corpus_file, 40), read_corpus(corpus_file, 40)
    assert a == b and len(a) == 40 and a != read_corpus(corpus_file)[:40]


def test_missing_corpus_is_one_clear_error(tiny_clip, tmp_path):
    with pytest.raises(EngineError, match="not found"):
        SecondMomentStore(None).get(tiny_clip, 0, corpus=tmp_path / "nope.txt")


def test_left_vector_is_normalised_solve_and_ridge():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    c = a @ a.T + 0.1 * torch.eye(16, dtype=torch.float64)
    k = torch.randn(16, generator=gen)
    u = left_vector(c, k)
    expected = torch.linalg.solve(c, k.double())
    torch.testing.assert_close(u.double(), expected / expected.norm(), rtol=0, atol=1e-6)
    assert u.dtype == torch.float32 and abs(float(u.norm()) - 1) < 1e-6
    ridge = left_vector(c, k, ridge=0.5)
    c_r = c + 0.5 * c.diagonal().mean() * torch.eye(16, dtype=torch.float64)
    expected_r = torch.linalg.solve(c_r, k.double())
    torch.testing.assert_close(ridge.double(), expected_r / expected_r.norm(), rtol=0, atol=1e-6)


def test_cholesky_factor_is_reused_until_c_changes(monkeypatch):
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda c, **kw: calls.append(1) or real(c, **kw))
    c = torch.eye(8, dtype=torch.float64) * 2
    k = torch.arange(1.0, 9.0)
    u1 = left_vector(c, k)
    u2 = left_vector(c, k)
    assert len(calls) == 1 and torch.equal(u1, u2)
    c[0, 0] = 8.0  # in-place change: the factor must be recomputed
    u3 = left_vector(c, k)
    assert len(calls) == 2
    expected = torch.linalg.solve(c, k.double())
    torch.testing.assert_close(u3.double(), expected / expected.norm(), rtol=0, atol=1e-6)
