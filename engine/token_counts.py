"""Token counts without torch: a slot's tokenizer rebuilt from its files with the `tokenizers` package.

transformers' tokenizer classes import torch (seconds at CLI start-up), yet `queue add` / `queue import`
only count and locate tokens. ``load_counting_tokenizer`` reads a tokenizer folder (``tokenizer.json``,
or CLIP's ``vocab.json`` + ``merges.txt``) into a ``CountingTokenizer`` that answers the calls
engine.tokens and engine.admission make. Whether it gives the ids transformers gives is not assumed:
``same_counts`` compares the two on ``PROBES`` (hostile texts), with the slot's template around them, and
callers use the counting tokenizer only for a folder that passed (``CountingRecord``); any other
slot keeps transformers. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from engine.tokens import PromptTemplate, TemplatedTokenizer, _squash, templated

# transformers' model_max_length when a tokenizer_config.json names none (VERY_LARGE_INTEGER)
_UNSET_MAX_LENGTH = int(1e30)
# Bump when CountingTokenizer or the probes change: stored verdicts then no longer apply.
RECIPE_VERSION = 1

PROBES: tuple[str, ...] = (
    "", " ", "a", "A cat", "The Eiffel Tower is in Paris.", "  leading and trailing  ", "tabs\tand\nnew\r\nlines",
    "many     spaces", "UPPER lower MiXeD", "İstanbul ß straße ǅ ﬁne", "café naïve résumé", "e\u0301 combining",
    "北京是中国的首都", "東京タワー", "🐱 cat 🐶🐶 dog 👩\u200d👩\u200d👧", "مرحبا بالعالم", "שלום",
    "zero\u200bwidth\u200djoin", "nbsp\u00a0here", "fullwidth ＡＢＣ１２３", "!!!", "...?!",
    "don't won't it's we're I'm you'll he'd", "a,b;c:d(e)[f]{g}<h>", "--- ___ *** ###", "1234567890 3.14159 1e-5",
    "<|endoftext|>", "<|startoftext|> x", "[CLS] [SEP] [PAD] [MASK] [UNK]", "</s> <pad> <unk> <extra_id_0>",
    "<|im_start|>user", "<bos><eos>", "<s>hi</s>", "control\x00\x01\x7fchars", "\ufeffbom", "emoji🙂glued",
    "x" * 300, " ".join(["word"] * 120), "The quick brown fox jumps over the lazy dog. " * 12, "a" + "\u0300" * 20,
    "Ω≈ç√∫˜µ≤≥÷", "ゔ ｶﾞ", "The Dalai Lama.", "A photo of the President of the United States", "🏳️\u200d🌈",
    "Ǆungla ﬀ ﬃ Ⅻ ㎏ ½", "\u3000ideographic\u3000space", "soft\u00adhyphen", "A  dog ,sitting .", "'quoted' \"double\"",
)


class CountingTokenizer:
    """A ``tokenizers.Tokenizer`` with the slice of transformers' tokenizer API the length and subject
    checks use: ``tok(text, add_special_tokens=...)["input_ids"]``, ``decode``, ``model_max_length``
    and ``pad_token_id``."""

    def __init__(self, backend: Any, model_max_length: int, word_suffix: str = "",
                 pad_token: str | None = None) -> None:
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.model_max_length = model_max_length
        self.pad_token_id = backend.token_to_id(pad_token) if pad_token else None
        self._word_suffix = word_suffix  # CLIP's "</w>": its decode turns it into spaces

    def __call__(self, text: str | list[str], *_: Any, add_special_tokens: bool = True, **__: Any) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}
        return {"input_ids": [e.ids for e in self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)]}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, **_: Any) -> str:
        """The text of ``ids`` (as transformers decodes it up to whitespace clean-up)."""
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text.replace(self._word_suffix, " ").strip() if self._word_suffix else text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _clip_from_vocab(folder: Path, config: dict) -> Any:
    """CLIP's BPE tokenizer from vocab.json + merges.txt, built the way transformers' CLIPTokenizer does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    unk = _token_text(config.get("unk_token")) or "<|endoftext|>"
    bos = _token_text(config.get("bos_token")) or "<|startoftext|>"
    eos = _token_text(config.get("eos_token")) or "<|endoftext|>"
    pad = _token_text(config.get("pad_token")) or "<|endoftext|>"
    vocab, merges = BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                   r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys((unk, bos, eos, pad))])
    tok.post_processor = processors.RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)),
                                                      trim_offsets=False, add_prefix_space=False)
    return tok


def load_counting_tokenizer(folder: Path | str) -> CountingTokenizer | None:
    """The counting tokenizer of a tokenizer folder, or None when its files are not ones this module
    reads (then only transformers can count). Check it with ``same_counts`` before trusting it."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json")
    config = config if isinstance(config, dict) else {}
    tokenizer_class = str(config.get("tokenizer_class") or "")
    try:
        if (folder / "tokenizer.json").is_file():
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif tokenizer_class.startswith("CLIPTokenizer") and (folder / "vocab.json").is_file() \
                and (folder / "merges.txt").is_file():
            backend = _clip_from_vocab(folder, config)
        else:
            return None
    except Exception:  # an unreadable or unusual file: transformers decides
        return None
    limit = config.get("model_max_length")
    limit = int(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else _UNSET_MAX_LENGTH
    suffix = getattr(backend.model, "end_of_word_suffix", None) if tokenizer_class.startswith("CLIPTokenizer") else None
    return CountingTokenizer(backend, limit, suffix or "", _token_text(config.get("pad_token")))


def folder_stamp(folder: Path | str) -> str:
    """A fingerprint of a tokenizer folder's files (names, sizes, modification times) and of the
    library versions a verdict depends on: a changed file or upgrade makes a stored verdict stale."""
    from importlib.metadata import PackageNotFoundError, version

    parts: list[str] = [f"recipe {RECIPE_VERSION}"]
    for package in ("tokenizers", "transformers"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} -")
    folder = Path(folder)
    try:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            stat = path.stat()
            parts.append(f"{path.name} {stat.st_size} {stat.st_mtime_ns}")
    except OSError:
        parts.append("unreadable")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class CountingRecord:
    """What a slot's counting tokenizer needs besides its folder: the text the pipeline puts around a
    prompt (a chat template already rendered), lowercasing, the token limit after templating, and the
    folder stamp it was checked against. ``ok``: it gave transformers' ids on every probe."""

    folder: str
    stamp: str
    around: tuple[str, str] = ("", "")
    lowercase: bool = False
    max_length: int | None = None
    limit: int | None = None  # the limit the caller derived from the reference tokenizer
    ok: bool = False
    pad_multiple: int = 1  # CogView4's left padding (PromptTemplate.pad_multiple)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> "CountingRecord | None":
        try:
            data = json.loads(text or "")
            return cls(**{**data, "around": tuple(data["around"])})
        except (ValueError, TypeError, KeyError):
            return None

    def tokenizer(self) -> Any | None:
        """The templated counting tokenizer, or None when the record failed or its folder changed."""
        if not self.ok or folder_stamp(self.folder) != self.stamp:
            return None
        fast = load_counting_tokenizer(self.folder)
        if fast is None:
            return None
        return _wrap(fast, self.around, self.lowercase, self.max_length, self.pad_multiple)


def _wrap(tokenizer: Any, around: tuple[str, str], lowercase: bool, max_length: int | None,
          pad_multiple: int = 1) -> Any:
    if around == ("", "") and not lowercase:
        return templated(tokenizer, PromptTemplate(pad_multiple=pad_multiple), max_length)
    return TemplatedTokenizer(tokenizer, PromptTemplate(wrap=f"{around[0]}{{}}{around[1]}", lowercase=lowercase,
                                                        pad_multiple=pad_multiple), max_length)


def _batch_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int] | None]:
    """Ids of each text (None where the tokenizer raises), in one call when it can."""
    try:
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=special, truncation=False)["input_ids"]]
    except Exception:  # one text broke the batch: ask one by one
        out: list[list[int] | None] = []
        for text in texts:
            try:
                out.append(list(tokenizer(text, add_special_tokens=special, truncation=False)["input_ids"]))
            except Exception:  # the reference cannot tokenize it: nothing to compare, the checker says so
                out.append(None)
        return out


def same_counts(reference: Any, candidate: Any, probes: Iterable[str] = PROBES) -> bool:
    """True when ``candidate`` gives ``reference``'s token ids on every probe (whole templated inputs
    and bare pieces), the same limit, and decodes to the same text up to case and whitespace."""
    if candidate.model_max_length != reference.model_max_length:
        return False
    texts = list(probes)
    for special in (True, False):
        want, got = _batch_ids(reference, texts, special), _batch_ids(candidate, texts, special)
        for w, g in zip(want, got):
            if w is None:
                continue
            if g != w or _squash(candidate.decode(w, skip_special_tokens=True)) != \
                    _squash(reference.decode(w, skip_special_tokens=True)):
                return False
    return True


def record_for(reference: Any, limit: int | None = None, folder: Path | str | None = None) -> CountingRecord | None:
    """Check the counting tokenizer of ``reference``'s folder (a transformers tokenizer, maybe templated,
    whose token limit the caller found to be ``limit``) against it; None when the folder is unknown.
    The record says whether the counting tokenizer may stand in for ``reference``."""
    inner = reference.tokenizer if isinstance(reference, TemplatedTokenizer) else reference
    folder = folder if folder is not None else getattr(inner, "name_or_path", None)
    if not folder or not Path(folder).is_dir():
        return None
    pad_multiple = 1
    if isinstance(reference, TemplatedTokenizer):
        around, lowercase, max_length = reference._around, reference.template.lowercase, reference._max_length
        pad_multiple = reference.template.pad_multiple
    else:
        around, lowercase, max_length = ("", ""), False, None
    base = CountingRecord(str(folder), folder_stamp(folder), tuple(around), bool(lowercase), max_length, limit,
                          pad_multiple=pad_multiple)
    fast = load_counting_tokenizer(folder)
    if fast is None or "{}" in "".join(around):
        return base
    return CountingRecord(**{**asdict(base), "around": base.around,
                             "ok": same_counts(reference, _wrap(fast, base.around, lowercase, max_length, pad_multiple))})
