"""Where the subject's last token sits in a templated prompt, and token-length checks.

The index comes from tokenizer arithmetic (prefix, subject and suffix tokenized separately, the
prefix's trailing space moved onto the subject, plus the tokenizer's leading special tokens such as
CLIP's BOS) and is cross-checked against the ids and the decoded text of the whole sequence. Text
longer than the encoder allows raises TokenizationError: nothing is truncated silently.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from engine.errors import TokenizationError


@dataclass(frozen=True)
class LocatedText:
    """A prompt as fed to the encoder and the position of its subject's last token (specials counted)."""

    text: str
    index: int
    length: int  # tokens including special tokens


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _full_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def leading_specials(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts before the text (1 for CLIP's BOS and BERT's CLS)."""
    probe = _ids(tokenizer, "a")
    full = _full_ids(tokenizer, "a")
    for start in range(len(full) - len(probe) + 1):
        if full[start : start + len(probe)] == probe:
            return start
    raise TokenizationError("cannot tell where this tokenizer's special tokens end; use a CLIP or BERT tokenizer")


def _squash(text: str) -> str:
    """Case- and whitespace-insensitive form used to compare decoded token text."""
    return "".join(unicodedata.normalize("NFC", text).lower().split())


def default_subject(prompt: str) -> str:
    """The subject used when none is given: the prompt without trailing punctuation and symbols.

    "The Dalai Lama." keys on "Lama", not on "." (which merges with a template's "," into one
    token and so never maps to whole tokens). A prompt made only of punctuation is kept as is.
    """
    text = unicodedata.normalize("NFC", prompt).strip()
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1])[0] in "PSZC"):
        end -= 1
    return text[:end] if end else text


def rewriting_templates(templates: Iterable[str]) -> list[str]:
    """The bare prompt first, then the context templates in order, duplicates dropped (first kept)."""
    seen: dict[str, None] = {"{}": None}
    for t in templates:
        seen.setdefault(t, None)
    return list(seen)


def check_length(tokenizer: Any, text: str, max_length: int) -> int:
    """Token count of ``text`` with special tokens; TokenizationError if above ``max_length``."""
    n = len(_full_ids(tokenizer, text))
    if n > max_length:
        raise TokenizationError(
            f"text {text[:60]!r} is {n} tokens, more than the encoder's {max_length}; shorten it"
        )
    return n


def locate_subject(
    tokenizer: Any, template: str, prompt: str, subject: str | None, max_length: int
) -> LocatedText:
    """Fill ``template`` ("...{}...") with ``prompt`` and find the last token of ``subject`` in it.

    ``subject`` defaults to ``default_subject(prompt)``; its first case-insensitive occurrence in
    the prompt is used. Raises TokenizationError when the subject is empty, absent, not a whole-token span
    of the sequence, or the text is too long.
    """
    if template.count("{}") != 1:
        raise TokenizationError(f"template {template!r} must contain exactly one '{{}}'")
    prompt = unicodedata.normalize("NFC", prompt).strip()
    subject = unicodedata.normalize("NFC", subject if subject is not None else default_subject(prompt)).strip()
    if not prompt:
        raise TokenizationError("the prompt is empty; give the text whose meaning should change")
    if not subject:
        raise TokenizationError("the subject is empty; leave it out to use the whole prompt")
    match = re.search(re.escape(subject), prompt, flags=re.IGNORECASE)
    if match is None:
        raise TokenizationError(f"subject {subject!r} does not occur in prompt {prompt!r}; pass a part of the prompt")

    pre_t, suf_t = template.split("{}")
    before = pre_t + prompt[: match.start()]
    subj = prompt[match.start() : match.end()]
    after = prompt[match.end() :] + suf_t
    text = before + subj + after
    length = check_length(tokenizer, text, max_length)

    # A space between prefix and subject belongs to the subject (word-level tokenizers see " word").
    if before[-1:].isspace():
        before = before.rstrip()
        subj = " " + subj
    subj_ids = _ids(tokenizer, subj)
    if not subj_ids:
        raise TokenizationError(f"subject {subject!r} produces no tokens; use a subject with letters or digits")
    offset = leading_specials(tokenizer)
    index = offset + len(_ids(tokenizer, before)) + len(subj_ids) - 1

    full = _full_ids(tokenizer, text)
    span = full[index - len(subj_ids) + 1 : index + 1]
    decoded_upto = tokenizer.decode(full[offset : index + 1], skip_special_tokens=True)
    decoded_subj = tokenizer.decode(subj_ids, skip_special_tokens=True)
    if span != subj_ids or not _squash(decoded_upto).endswith(_squash(decoded_subj)):
        raise TokenizationError(
            f"subject {subject!r} does not map to whole tokens in {text!r} (tokens merge across its edge); "
            "choose a subject that ends at a word boundary"
        )
    return LocatedText(text=text, index=index, length=length)


def locate_all(
    tokenizer: Any, templates: Sequence[str], prompt: str, subject: str | None, max_length: int
) -> list[LocatedText]:
    """``locate_subject`` for each template, in order."""
    return [locate_subject(tokenizer, t, prompt, subject, max_length) for t in templates]
