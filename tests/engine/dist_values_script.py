"""One joint batch of 3 requests on a tiny CLIP under `accelerate launch`; each process saves its result.

Usage: dist_values_script.py TOKENIZER_DIR CORPUS OUT_DIR   (writes OUT_DIR/rank{R}.pt)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import AutoTokenizer, CLIPTextModel  # noqa: E402

from engine.adapters import adapter_for  # noqa: E402
from engine.covariance import SecondMomentStore  # noqa: E402
from engine.distributed import ShardingError, process_info  # noqa: E402
from engine.hashing import module_hash  # noqa: E402
from engine.methods.refact.batch import BatchInsertConfig, compute_batch  # noqa: E402
from engine.methods.refact.hparams import ReFACTHParams  # noqa: E402
from tests.engine.conftest import EditableModel, clip_config  # noqa: E402
from tests.engine.test_batch_values import requests  # noqa: E402

# the threshold is out of reach, so every request runs all its steps and the rounding of its chunk matters
REQS = [requests(8)[i] for i in (0, 5, 7)]  # token lengths differ, so padding depends on the chunk
HP = ReFACTHParams(layer=1, max_steps=8, prob_threshold=0.99)


def run(tok_dir: str, corpus: str, batch: int | None) -> dict:
    """v*, the joint delta and the stats of 3 requests; plus what a 1-request batch does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        enc = CLIPTextModel(clip_config(layers=3, init=3.0)).eval()
        model = EditableModel(enc, AutoTokenizer.from_pretrained(tok_dir), adapter_for(enc))
        store = SecondMomentStore(None)
        res = compute_batch(model, REQS, HP, BatchInsertConfig(mode="joint"), moments=store,
                            corpus=Path(corpus), batch=batch)
        before = module_hash(enc)
        try:
            compute_batch(model, requests(1), HP, BatchInsertConfig(mode="joint"), moments=store, corpus=Path(corpus))
            refused = None
        except ShardingError as exc:
            refused = str(exc)
        unchanged = module_hash(enc) == before
    finally:
        torch.set_num_threads(threads)
    return {
        "rank": process_info()[0], "world": process_info()[1],
        "v_star": torch.stack([r.tensors["v_star"] for r in res.values.results]),
        "left": [u.left for u in res.delta.updates], "right": [u.right for u in res.delta.updates],
        "chunk_size": res.values.stats.chunk_size, "chunks": res.values.stats.chunks,
        "refused": refused, "unchanged": unchanged,
    }


def main() -> None:
    tok_dir, corpus, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    result = run(tok_dir, corpus, 1)
    torch.save(result, out / f"rank{result['rank']}.pt")


if __name__ == "__main__":
    main()
