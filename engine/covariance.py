"""Second moment C = E[k k^T] of fc2's input at one layer, over a text corpus, with caching.

Collection packs many corpus lines into each forward (up to ``batch_tokens`` padded tokens),
stops the forward at layer l's fc1 activation and accumulates in float64 over the rows that
``Positions`` names: every attended position (BOS/EOS included, padding excluded; the paper's C,
the default) or every position the denoiser reads, in the pipeline's own format (CLIP: padded to 77
with the tokenizer's pad token, EOS on SD1 and "!" on SD2/SDXL/SD3-G, no attention mask, padding
rows included). The denoiser reads the padding positions of every prompt, so a C without them
leaves u free to align with their keys. Results are cached in memory and on disk as
``<cache_dir>/<key>.safetensors`` keyed by (upstream weights hash, layer, corpus sha256, n_samples,
encoder slot, tokenization mode). Only the layers an edit asks for are ever collected.

Inputs are fed in the slot's own format: T5 in SD3/FLUX sees every prompt padded to 256/512 tokens
without a mask, so its keys are collected that way; only the prompt's own tokens become rows (the
padding rows would outnumber them 20:1 and mostly repeat one pattern). A templated slot (an LLM's chat
template, Lumina's system prompt) gets every corpus line through its template: the slot's tokenizer
is the ``TemplatedTokenizer`` that the prompts go through.

Memory: each batch's k^T k is added in place in float64 column blocks (no d x d temporary), into an
accumulator of the storage dtype: float64 below ``FP32_STORAGE_FROM`` wide, float32 from there (LLM
``down_proj`` inputs of 9216..32768, T5-XXL's 10240), so C takes width² x 4 bytes; every solve upcasts
it to float64 (engine.methods.refact.linalg). ``moment_memory`` gives the figure, stated in one line
before a long collection and refused up front when the device cannot hold it (engine.admission).
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open

from engine.adapters.base import EncoderAdapter
from engine.admission import MomentMemory, check_moment_memory, free_memory
from engine.errors import EngineError
from engine.events import Progress, ProgressCallback
from engine.files import file_sha256, save_safetensors_atomic

FORMAT = "refact-mom2/1"
DEFAULT_BATCH_TOKENS = 64 * 77
# Second moments kept in memory per store (T5-XXL's C is 800 MiB in fp64: about two of them).
DEFAULT_MEMORY_BYTES = 2 * 2**30
# Key widths from which a CPU collection takes minutes (bigG 5120, T5-XXL 10240).
GPU_ADVISED_KEY_SIZE = 4096
# Key widths from which C is stored in float32 (half of float64; the solve upcasts). Every CLIP and
# bigG C (and the parity tests') stays float64. Measured effect on u: BENCHMARKS.md, "Second moments
# at LLM widths".
FP32_STORAGE_FROM = 8192
# Columns of one batch's k^T k formed at once in float64 (a d x 2048 x 8-byte workspace).
COLUMN_BLOCK = 2048


def storage_dtype(width: int) -> torch.dtype:
    """The dtype C of a ``width``-wide key is accumulated and kept in."""
    return torch.float32 if int(width) >= FP32_STORAGE_FROM else torch.float64


def moment_memory(width: int, rank: int = 0) -> MomentMemory:
    """The memory figure of C at ``width`` (storage as ``storage_dtype``; ``rank`` > 0: low-rank solve)."""
    return MomentMemory(int(width), str(storage_dtype(width)).removeprefix("torch."), int(rank))


def gpu_advice(adapter: EncoderAdapter) -> str | None:
    """One line advising a GPU when collecting this encoder's second moment on CPU will be slow."""
    d = int(adapter.key_size)
    if d < GPU_ADVISED_KEY_SIZE or adapter.device.type != "cpu":
        return None
    mib = d * d * 8 / 2**20
    return (f"second moment of a {d}-wide key (its fp64 factor is {mib:.0f} MiB per layer) on CPU takes minutes; "
            "a GPU (--device cuda) is advised")


def check_second_moment_fits(adapter: EncoderAdapter, free_bytes: int | None = None, rank: int = 0) -> int:
    """Bytes C needs (``moment_memory``: C in its storage dtype plus the fp64 solve workspace);
    EngineError in one line when the device has less free memory (``free_bytes`` overrides the
    measurement, for the device and the host alike)."""
    need = moment_memory(adapter.key_size, rank)
    return check_moment_memory(need, adapter.device, free_bytes, free_bytes)


# C from this many bytes gets its memory figure stated in one line before the collection.
STATE_MEMORY_FROM = 256 * 2**20


class Positions(str, Enum):
    """Which token positions of each corpus line become rows of C."""

    ATTENDED = "attended"  # the prompt's own tokens (BOS/EOS included): the paper's C
    READ = "read"  # every position the denoiser reads, padding included, as the pipeline feeds them


def read_format(adapter: EncoderAdapter) -> int | None:
    """The length a pipeline pads every prompt to and feeds without a mask, when it does (CLIP in
    SD1/SD2/SDXL/SD3/FLUX: its 77; T5 in SD3/FLUX: its fixed length), else None (the encoder reads
    its attended tokens only, e.g. BERT mean pooling or a decoder LM)."""
    if adapter.family == "clip":
        return int(adapter.max_length)
    if adapter.family == "t5" and adapter.fixed_length and not getattr(adapter, "use_mask", True):
        return int(adapter.fixed_length)
    return None


# Same subset rule as the reference (Python's random.Random(1) shuffle of line indices).
SUBSET_SEED = 1


def default_corpus_path() -> Path:
    """The caption corpus shipped with the project (``datasets/caption_corpus.txt``)."""
    return Path(__file__).resolve().parents[1] / "datasets" / "caption_corpus.txt"


def read_corpus(path: Path, n_samples: int | None = None) -> list[str]:
    """Non-empty stripped lines; with ``n_samples``, a fixed pseudo-random subset of that size."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if n_samples is not None and n_samples < len(lines):
        order = list(range(len(lines)))
        random.Random(SUBSET_SEED).shuffle(order)
        lines = [lines[i] for i in order[:n_samples]]
    return lines


@torch.no_grad()
def collect_second_moment(
    adapter: EncoderAdapter,
    tokenizer: Any,
    lines: Sequence[str],
    layer: int,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    positions: Positions = Positions.ATTENDED,
    dtype: torch.dtype | None = None,
    column_block: int = COLUMN_BLOCK,
) -> tuple[torch.Tensor, int]:
    """(C on CPU, number of token vectors) for fc2's input at ``layer``, over ``positions``
    (Positions.READ on an encoder that ``read_format`` gives none for is the attended C).

    C is accumulated and returned in ``dtype`` (default ``storage_dtype`` of the key width); each
    batch's k^T k is formed in float64, ``column_block`` columns at a time, and added in place.
    Lines longer than the encoder's maximum are truncated: the corpus is a statistic, not a request.
    """
    if not lines:
        raise EngineError("the statistics corpus has no text lines; point it at a text file with one caption per line")
    enc = tokenizer(list(lines), truncation=True, max_length=adapter.max_length, add_special_tokens=True)
    fixed = adapter.fixed_length  # pad every batch to the pipeline's length (T5 in SD3/FLUX)
    read_all = read_format(adapter) if positions == Positions.READ else None
    fixed = read_all or fixed
    seqs = [list(ids) for ids in enc["input_ids"]]
    attended = enc.get("attention_mask")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Longest first, so each batch's padding is small and the first batch shows the peak memory.
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    d = adapter.key_size
    acc = torch.zeros(d, d, dtype=dtype or storage_dtype(d), device=adapter.device)
    n_tokens = 0
    done = 0
    start = 0
    while start < len(order):
        width = fixed or len(seqs[order[start]])
        rows = max(1, batch_tokens // width)
        chunk = order[start : start + rows]
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = torch.tensor(attended[i]) if attended else 1  # CogView4's pads: 0
        if read_all:  # the pipeline's input: every position, no mask
            mask = torch.ones_like(mask)
        batch = {"input_ids": ids.to(adapter.device), "attention_mask": mask.to(adapter.device)}
        if adapter.family == "bert":
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        keys = adapter.prefix(batch, layer, with_output=False).key
        k = keys[batch["attention_mask"].bool()]
        accumulate(acc, k, column_block)
        n_tokens += k.shape[0]
        start += len(chunk)
        done += len(chunk)
        if progress is not None:
            progress(Progress(task="second-moment", done=done, total=len(order), detail=f"layer {layer}"))
    return acc.div_(max(n_tokens, 1)).cpu(), n_tokens


def accumulate(acc: torch.Tensor, keys: torch.Tensor, column_block: int = COLUMN_BLOCK) -> None:
    """acc += keys^T keys in place, the product formed in float64 ``column_block`` columns at a time
    (a float32 ``acc`` then rounds once per batch, not once per row)."""
    k = keys.to(torch.float64)
    if acc.dtype == torch.float64:
        acc.addmm_(k.T, k)  # in place: no d x d temporary
        return
    for j in range(0, k.shape[1], column_block):
        acc[:, j : j + column_block] += (k.T @ k[:, j : j + column_block]).to(acc.dtype)


@dataclass(frozen=True)
class StatsEntry:
    """One cached second-moment file."""

    path: Path
    key: str
    layer: int
    upstream_hash: str
    corpus_sha256: str
    corpus: str
    n_samples: str
    n_tokens: int
    family: str
    module: str
    size_bytes: int
    created: float
    slot: str = "text_encoder"
    mode: str = "longest"


def stats_key(upstream_hash: str, layer: int, corpus_sha256: str, n_samples: int | None, *,
              slot: str = "text_encoder", mode: str = "longest") -> str:
    """Cache key; the first slot in its plain format keeps the v0.1 key (old caches stay valid)."""
    blob = f"{FORMAT}|{upstream_hash}|{layer}|{corpus_sha256}|{n_samples if n_samples is not None else 'all'}"
    if (slot, mode) != ("text_encoder", "longest"):
        blob += f"|{slot}|{mode}"
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _adapter_tokenizer(model: Any) -> tuple[EncoderAdapter, Any]:
    return model.adapter, model.tokenizer


class SecondMomentStore:
    """Memory + disk cache of C per (upstream weights, layer, corpus, n_samples)."""

    def __init__(self, cache_dir: Path | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 max_memory_bytes: int = DEFAULT_MEMORY_BYTES, positions: Positions = Positions.ATTENDED,
                 solve_rank: int = 0) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.solve_rank = int(solve_rank)  # the memory figure's solve: dense (0) or low-rank
        self.positions = Positions(positions)
        self.batch_tokens = batch_tokens
        # least recently used C are dropped from memory past this (the newest is always kept);
        # the disk cache still holds them
        self.max_memory_bytes = max_memory_bytes
        self._memory: dict[str, torch.Tensor] = {}
        self._corpus_hash: dict[tuple[str, float, int], str] = {}

    def _corpus_sha(self, corpus: Path) -> str:
        st = corpus.stat()
        memo_key = (str(corpus.resolve()), st.st_mtime, st.st_size)
        if memo_key not in self._corpus_hash:
            self._corpus_hash[memo_key] = file_sha256(corpus)
        return self._corpus_hash[memo_key]

    def path_for(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None

    def get(
        self,
        model: Any,
        layer: int,
        corpus: Path | None = None,
        n_samples: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """C (CPU, in ``storage_dtype``) for ``layer`` of ``model`` (anything with ``.adapter`` and
        ``.tokenizer``); before a collection, the memory figure is checked against the device
        (EngineError in one line when it cannot hold C) and, from STATE_MEMORY_FROM, stated as a
        ``Progress`` with ``done == 0`` and the line as its detail."""
        adapter, tokenizer = _adapter_tokenizer(model)
        corpus = Path(corpus) if corpus is not None else default_corpus_path()
        if not corpus.is_file():
            raise EngineError(f"statistics corpus {corpus} not found; pass an existing text file with --corpus")
        upstream = adapter.upstream_hash(layer)
        corpus_sha = self._corpus_sha(corpus)
        slot, mode = str(getattr(model, "component", "text_encoder")), adapter.tokenization_mode
        if self.positions == Positions.READ and read_format(adapter):
            mode += "+read"  # a different C: its own cache entry (attended entries keep their keys)
        key = stats_key(upstream, layer, corpus_sha, n_samples, slot=slot, mode=mode)
        if key in self._memory:
            self._memory[key] = self._memory.pop(key)  # most recently used last
            return self._memory[key]
        path = self.path_for(key)
        if path is not None and path.is_file():
            with safe_open(str(path), framework="pt") as f:
                mom2 = f.get_tensor("mom2")
            mom2 = mom2.to(storage_dtype(mom2.shape[0]))
            self._remember(key, mom2)
            return mom2
        lines = read_corpus(corpus, n_samples)
        need = moment_memory(adapter.key_size, self.solve_rank)
        free = free_memory(adapter.device)
        check_moment_memory(need, adapter.device, free)
        if progress is not None:
            notes = [need.line(adapter.device.type, free)] if need.total >= STATE_MEMORY_FROM else []
            notes += [a for a in [gpu_advice(adapter)] if a is not None]
            for note in notes:
                progress(Progress(task="second-moment", done=0, total=len(lines), detail=note))
        mom2, n_tokens = collect_second_moment(
            adapter, tokenizer, lines, layer, batch_tokens=self.batch_tokens, progress=progress,
            positions=self.positions,
        )
        self._remember(key, mom2)
        if path is not None:
            meta = {
                "format": FORMAT,
                "layer": str(layer),
                "upstream_hash": upstream,
                "corpus_sha256": corpus_sha,
                "corpus": str(corpus),
                "n_samples": str(n_samples) if n_samples is not None else "all",
                "n_lines": str(len(lines)),
                "n_tokens": str(n_tokens),
                "family": adapter.family,
                "module": adapter.fc2_name(layer),
                "slot": slot,
                "mode": mode,
                "created": f"{time.time():.3f}",
            }
            try:
                save_safetensors_atomic(path, {"mom2": mom2.contiguous()}, meta)
            except OSError:
                pass  # a read-only (or full) workspace: C serves this run from memory, uncached
        return mom2

    def entries(self) -> list[StatsEntry]:
        """Every cached file in ``cache_dir``, newest first (unreadable files are skipped)."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return []
        out: list[StatsEntry] = []
        for path in self.cache_dir.glob("*.safetensors"):
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
            except Exception:  # a partial or foreign file is not an entry
                continue
            if meta.get("format") != FORMAT:
                continue
            out.append(
                StatsEntry(
                    path=path,
                    key=path.stem,
                    layer=int(meta.get("layer", -1)),
                    upstream_hash=meta.get("upstream_hash", ""),
                    corpus_sha256=meta.get("corpus_sha256", ""),
                    corpus=meta.get("corpus", ""),
                    n_samples=meta.get("n_samples", ""),
                    n_tokens=int(meta.get("n_tokens", 0)),
                    family=meta.get("family", ""),
                    module=meta.get("module", ""),
                    size_bytes=path.stat().st_size,
                    created=float(meta.get("created", 0.0)),
                    slot=meta.get("slot", "text_encoder"),
                    mode=meta.get("mode", "longest"),
                )
            )
        return sorted(out, key=lambda e: -e.created)

    def _remember(self, key: str, mom2: torch.Tensor) -> None:
        self._memory[key] = mom2
        while len(self._memory) > 1 and self.memory_bytes() > self.max_memory_bytes:
            self._memory.pop(next(iter(self._memory)))

    def memory_bytes(self) -> int:
        """Bytes of the second moments held in memory."""
        return sum(t.numel() * t.element_size() for t in self._memory.values())

    def clear_memory(self) -> None:
        self._memory.clear()
