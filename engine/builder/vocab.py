"""Tokenizers built offline: SD's CLIP BPE tokenizer and a T5-layout Unigram tokenizer.

The CLIP tokenizer comes from the BPE file that open_clip_torch ships and gives Stable Diffusion's
exact ids. The T5 tokenizer is a small Unigram model trained on the shipped caption corpus with
T5's id layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, pieces, then ``<extra_id_99>`` ... ``<extra_id_0>``),
so it loads with transformers' ``T5TokenizerFast``; its ids are not T5's real ids.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import string
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path

from engine.builder.common import BuildError

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# 49408 = 256 byte symbols + 256 byte symbols with '</w>' + merges + 2 special tokens.
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2

T5_MAX_LENGTH = 512
T5_EXTRA_IDS = 100
T5_SPECIALS = ("<pad>", "</s>", "<unk>")
_T5_PIECES = 4000  # target; the corpus supports fewer, which is fine
_T5_MAX_PIECE = 16
_SPACE = "\u2581"  # SentencePiece's word-start marker


# ----- CLIP -------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the remaining bytes follow in byte
    order, shifted to code points from 256 up.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    kept = set(keep)
    rest = [b for b in range(256) if b not in kept]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def clip_bpe_path() -> Path:
    """Location of open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise BuildError("open_clip_torch is not installed; install it to build the CLIP tokenizer")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise BuildError(f"{path} is missing; reinstall open_clip_torch to build the CLIP tokenizer")
    return path


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP BPE vocabulary (49408 entries) and its 48894 merge pairs, in SD's id order."""
    with gzip.open(clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]  # line 0 is a header
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise BuildError(f"the CLIP BPE file gave {len(vocab)} tokens instead of {CLIP_VOCAB_SIZE}")
    return vocab, merges


def build_clip_tokenizer(pad_token: str = EOS_TOKEN):
    """A transformers ``CLIPTokenizer`` giving Stable Diffusion's exact token ids, built offline.

    ``pad_token``: SD1 and the first SDXL/SD3 tokenizer pad with ``<|endoftext|>``; SD2 and the
    OpenCLIP (bigG) tokenizers pad with ``"!"`` (id 0).
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


# ----- T5 ---------------------------------------------------------------------------------------


def _default_corpus() -> Path:
    path = Path(__file__).resolve().parents[2] / "datasets" / "caption_corpus.txt"
    if not path.is_file():
        raise BuildError(f"{path} is missing; the T5 tokenizer is trained on the shipped caption corpus")
    return path


def _words(lines: list[str]) -> Counter:
    out: Counter = Counter()
    for line in lines:
        for word in unicodedata.normalize("NFKC", line).split():
            out[_SPACE + word] += 1
    return out


@lru_cache(maxsize=4)
def t5_pieces(corpus: Path | None = None) -> tuple[tuple[str, float], ...]:
    """Unigram pieces and log-probability scores trained on ``corpus`` (default: the caption corpus).

    The ``tokenizers`` trainer picks the pieces (its set is stable run to run, its EM scores are
    not: Rust hash-map order changes float sums), so the scores are recomputed here as log relative
    substring frequencies, which makes the tokenizer identical on every build.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    lines = (corpus or _default_corpus()).read_text(encoding="utf-8").splitlines()
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation)
                      | {chr(c) for c in range(0xC0, 0x180)})
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True),
    ])
    trainer = trainers.UnigramTrainer(
        vocab_size=_T5_PIECES, special_tokens=list(T5_SPECIALS), unk_token="<unk>", show_progress=False,
        initial_alphabet=alphabet, max_piece_length=_T5_MAX_PIECE,
    )
    tok.train_from_iterator(lines, trainer)
    pieces = sorted(p for p in tok.get_vocab() if p not in T5_SPECIALS)
    wanted = set(pieces)
    counts: Counter = Counter()
    for word, n in _words(lines).items():
        for i in range(len(word)):
            for j in range(i + 1, min(len(word), i + _T5_MAX_PIECE) + 1):
                if word[i:j] in wanted:
                    counts[word[i:j]] += n
    total = sum(counts.values()) or 1
    floor = math.log(0.5 / total)
    scored = [(p, round(math.log(counts[p] / total), 6) if counts[p] else floor) for p in pieces]
    scored.sort(key=lambda ps: (-ps[1], ps[0]))
    return tuple(scored)


def build_t5_tokenizer(max_length: int = T5_MAX_LENGTH, corpus: Path | None = None):
    """A ``T5TokenizerFast`` with T5's id layout (pad 0, eos 1, unk 2, 100 sentinels at the end)."""
    from transformers import T5TokenizerFast

    vocab = [(s, 0.0) for s in T5_SPECIALS] + list(t5_pieces(corpus))
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(T5_EXTRA_IDS - 1, -1, -1)]
    return T5TokenizerFast(vocab=vocab, extra_ids=T5_EXTRA_IDS, model_max_length=max_length)
