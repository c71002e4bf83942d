"""Where the subject's last token sits in a templated prompt, and token-length checks.

The index comes from tokenizer arithmetic (prefix, subject and suffix tokenized separately, the
prefix's trailing space moved onto the subject, plus the tokenizer's leading special tokens such as
CLIP's BOS) and is cross-checked against the ids and the decoded text of the whole sequence. Text
longer than the encoder allows raises TokenizationError: nothing is truncated silently.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from engine.errors import TokenizationError


@dataclass(frozen=True)
class LocatedText:
    """A prompt as fed to the encoder and the position of its subject's last token (specials counted)."""

    text: str
    index: int
    length: int  # tokens including special tokens


_SLOT_MARK = "\u2063{prompt}\u2063"  # stands for the prompt while a chat template is rendered


@dataclass(frozen=True)
class PromptTemplate:
    """How a pipeline's ``encode_prompt`` turns a prompt into the text its encoder reads.

    ``chat``: one user turn through the tokenizer's chat template with ``chat_kwargs`` (Z-Image,
    FLUX.2); ``wrap``: a fixed text around the prompt (Qwen-Image); ``prefix``: text put before the prompt (Lumina 2's system prompt); ``lowercase``:
    PixArt lowercases prompts (its caption cleaner is off unless bs4 and ftfy are installed).
    """

    prefix: str = ""
    wrap: str = ""  # a whole input with one "{}" for the prompt (Qwen-Image's prompt_template_encode)
    chat: bool = False
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    lowercase: bool = False

    def is_plain(self) -> bool:
        return not (self.prefix or self.wrap or self.chat or self.lowercase)

    def around(self, tokenizer: Any) -> tuple[str, str]:
        """(text before, text after) the prompt in the encoder's input."""
        if self.wrap:
            before, after = self.wrap.split("{}")
            return self.prefix + before, after
        if not self.chat:
            return self.prefix, ""
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SLOT_MARK}], tokenize=False, add_generation_prompt=True, **self.chat_kwargs
        )
        if rendered.count(_SLOT_MARK) != 1:
            raise TokenizationError("the tokenizer's chat template does not show the prompt once; rebuild the tokenizer")
        before, after = rendered.split(_SLOT_MARK)
        return self.prefix + before, after


PLAIN = PromptTemplate()


class TemplatedTokenizer:
    """A tokenizer that feeds every text through a pipeline's ``PromptTemplate``.

    Calls with special tokens (whole encoder inputs) get the template around the text, as
    ``encode_prompt`` does; calls without (pieces, used to count a prefix or subject) only get its
    text transform. Everything else is the wrapped tokenizer's, so ``locate_subject`` finds the
    subject inside the templated sequence and cross-checks it against the decoded tokens.
    """

    def __init__(self, tokenizer: Any, template: PromptTemplate, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self._around = template.around(tokenizer)
        self._max_length = max_length

    @property
    def model_max_length(self) -> int:
        """The pipeline's token limit after templating when given, else the tokenizer's own."""
        return self._max_length if self._max_length is not None else self.tokenizer.model_max_length

    def _text(self, text: str, whole: bool) -> str:
        text = text.lower() if self.template.lowercase else text
        if self.template.lowercase:
            text = text.strip() if whole else text
        return f"{self._around[0]}{text}{self._around[1]}" if whole else text

    def __call__(self, text: Any, *args: Any, add_special_tokens: bool = True, **kwargs: Any) -> Any:
        if isinstance(text, str):
            text = self._text(text, add_special_tokens)
        else:
            text = [self._text(t, add_special_tokens) for t in text]
        return self.tokenizer(text, *args, add_special_tokens=add_special_tokens, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def templated(tokenizer: Any, template: PromptTemplate, max_length: int | None = None) -> Any:
    """``tokenizer`` itself for a plain template, else a ``TemplatedTokenizer`` (limit ``max_length``)."""
    return tokenizer if template.is_plain() else TemplatedTokenizer(tokenizer, template, max_length)


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
    around, lower = ("", ""), False
    if isinstance(tokenizer, TemplatedTokenizer):  # the pipeline's template goes around the ReFACT one
        around, lower, tokenizer = tokenizer._around, tokenizer.template.lowercase, tokenizer.tokenizer
    prompt = unicodedata.normalize("NFC", prompt).strip()
    subject = unicodedata.normalize("NFC", subject if subject is not None else default_subject(prompt)).strip()
    if lower:
        template, prompt, subject = template.lower(), prompt.lower(), subject.lower()
    if not prompt:
        raise TokenizationError("the prompt is empty; give the text whose meaning should change")
    if not subject:
        raise TokenizationError("the subject is empty; leave it out to use the whole prompt")
    match = re.search(re.escape(subject), prompt, flags=re.IGNORECASE)
    if match is None:
        raise TokenizationError(f"subject {subject!r} does not occur in prompt {prompt!r}; pass a part of the prompt")

    pre_t, suf_t = template.split("{}")
    before = around[0] + pre_t + prompt[: match.start()]
    subj = prompt[match.start() : match.end()]
    after = prompt[match.end() :] + suf_t + around[1]
    text = before + subj + after
    length = check_length(tokenizer, text, max_length)
    plain_text = pre_t + prompt + suf_t  # what callers pass back to the (templating) tokenizer

    # A space between prefix and subject belongs to the subject (word-level tokenizers see " word").
    if before[-1:] == " ":
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
    return LocatedText(text=plain_text, index=index, length=length)


def locate_all(
    tokenizer: Any, templates: Sequence[str], prompt: str, subject: str | None, max_length: int
) -> list[LocatedText]:
    """``locate_subject`` for each template, in order."""
    return [locate_subject(tokenizer, t, prompt, subject, max_length) for t in templates]
