"""The v* of a batch sharded over 2 accelerate CPU processes (gloo) equals one process bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from accelerate_launch import launch

from engine import distributed
from engine.distributed import ShardingError
from engine.methods.refact.edit import compute_values
from engine.methods.refact.hparams import ReFACTHParams
from tests.engine.test_batch_values import requests

SCRIPT = Path(__file__).with_name("dist_values_script.py")


def _launch_two(tok_dir: Path, corpus: Path, out: Path) -> list[dict]:
    launch(2, [str(SCRIPT), str(tok_dir), str(corpus), str(out)])
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_equal_one_bit_for_bit(clip_tokenizer, corpus_file, tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from dist_values_script import run

    tok_dir = tmp_path / "tok"
    clip_tokenizer.save_pretrained(str(tok_dir))
    # 3 chunks of 1 request over 2 processes: rank 0 optimises two, rank 1 one
    one = run(str(tok_dir), str(corpus_file), 1)
    ranks = _launch_two(tok_dir, corpus_file, tmp_path)
    assert (one["world"], [r["world"] for r in ranks]) == (1, [2, 2])
    assert one["chunks"] == 3 and one["refused"] is None
    for got in ranks:  # every process holds the gathered v* and the same solved delta as one process
        assert (got["chunk_size"], got["chunks"]) == (1, 3)
        assert torch.equal(got["v_star"], one["v_star"])
        assert len(got["left"]) == len(one["left"]) == 1
        assert all(torch.equal(a, b) for a, b in zip(got["left"], one["left"]))
        assert all(torch.equal(a, b) for a, b in zip(got["right"], one["right"]))
        # bad input: 2 processes, 1 request -> one line, nothing computed or applied
        assert got["refused"].startswith("2 processes were launched for 1 requests")
        assert "\n" not in got["refused"] and got["unchanged"]
    assert float(one["v_star"].abs().max()) > 0


def test_chunks_decide_the_bits_not_the_process(tiny_clip, stats_store, corpus_file):
    """What makes sharding by chunks necessary: v* of the same request differs by rounding with the
    chunk it shares, and equals exactly what the same chunk gives (the sharded unit)."""
    hp = ReFACTHParams(layer=1, max_steps=8, prob_threshold=0.99)
    mom2 = stats_store.get(tiny_clip, 1, corpus=corpus_file)
    reqs = requests(4)
    whole = compute_values(tiny_clip, reqs, hp, second_moment=mom2)
    pairs = compute_values(tiny_clip, reqs, hp, second_moment=mom2, batch=2)
    again = compute_values(tiny_clip, reqs, hp, second_moment=mom2, batch=2)
    assert (whole.stats.chunk_size, pairs.stats.chunk_size, pairs.stats.chunks) == (32, 2, 2)
    gap = max(float((a.tensors["v_star"] - b.tensors["v_star"]).abs().max())
              for a, b in zip(whole.results, pairs.results))
    assert gap < 1e-4  # same optimisation, up to float rounding
    assert all(torch.equal(a.tensors["v_star"], b.tensors["v_star"]) for a, b in zip(pairs.results, again.results))


def test_more_processes_than_requests_is_one_line(tiny_clip, stats_store, corpus_file, monkeypatch):
    monkeypatch.setattr(distributed, "process_info", lambda: (0, 4))
    hp = ReFACTHParams(layer=1, max_steps=2)
    mom2 = stats_store.get(tiny_clip, 1, corpus=corpus_file)
    with pytest.raises(ShardingError, match=r"^4 processes were launched for 3 requests; launch at most 3"):
        compute_values(tiny_clip, requests(3), hp, second_moment=mom2)
