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
    PixArt lowercases prompts (its caption cleaner is off unless bs4 and ftfy are installed);
    ``pad_multiple``: CogView4 prepends pad tokens until the input's length is a multiple of it (16).
    """

    prefix: str = ""
    wrap: str = ""  # a whole input with one "{}" for the prompt (Qwen-Image's prompt_template_encode)
    chat: bool = False
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    lowercase: bool = False
    system: str = ""  # chat: a system turn before the user's (FLUX.2's SYSTEM_MESSAGE)
    parts: bool = False  # chat: message content as a list of typed parts ([{"type": "text", ...}]), as FLUX.2 sends it
    generation_prompt: bool = True  # chat: add_generation_prompt (FLUX.2 passes False)
    pad_multiple: int = 1  # left padding of every whole input to a multiple of this (CogView4: 16)

    def is_plain(self) -> bool:
        return not (self.prefix or self.wrap or self.chat or self.lowercase or self.pad_multiple > 1)

    def left_pad(self, length: int) -> int:
        """Pad tokens put before an input of ``length`` tokens (CogView4's ``(16 - length % 16) % 16``)."""
        return (self.pad_multiple - length % self.pad_multiple) % self.pad_multiple

    def around(self, tokenizer: Any, renderer: Any = None) -> tuple[str, str]:
        """(text before, text after) the prompt in the encoder's input.

        ``renderer`` renders the chat template when it is not the tokenizer's own (a processor's). A BOS
        the template writes is left to the tokenizer when the tokenizer adds one itself, as a processor's
        ``apply_chat_template`` then tokenizes without special tokens: either way the sequence has one BOS.
        """
        if self.wrap:
            before, after = self.wrap.split("{}")
            return self.prefix + before, after
        if not self.chat:
            return self.prefix, ""

        def turn(role: str, text: str) -> dict[str, Any]:
            return {"role": role, "content": [{"type": "text", "text": text}] if self.parts else text}

        messages = ([turn("system", self.system)] if self.system else []) + [turn("user", _SLOT_MARK)]
        rendered = (renderer or tokenizer).apply_chat_template(
            messages, tokenize=False, add_generation_prompt=self.generation_prompt, **self.chat_kwargs
        )
        if rendered.count(_SLOT_MARK) != 1:
            raise TokenizationError("the tokenizer's chat template does not show the prompt once; rebuild the tokenizer")
        before, after = rendered.split(_SLOT_MARK)
        bos = getattr(tokenizer, "bos_token", None)
        if bos and before.startswith(bos) and _full_ids(tokenizer, "a")[:1] == [tokenizer.bos_token_id]:
            before = before[len(bos):]
        return self.prefix + before, after


PLAIN = PromptTemplate()


class TemplatedTokenizer:
    """A tokenizer that feeds every text through a pipeline's ``PromptTemplate``.

    Calls with special tokens (whole encoder inputs) get the template around the text, as
    ``encode_prompt`` does; calls without (pieces, used to count a prefix or subject) only get its
    text transform. Everything else is the wrapped tokenizer's, so ``locate_subject`` finds the
    subject inside the templated sequence and cross-checks it against the decoded tokens.
    """

    def __init__(self, tokenizer: Any, template: PromptTemplate, max_length: int | None = None,
                 renderer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self._around = template.around(tokenizer, renderer)
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
        if add_special_tokens and self.template.pad_multiple > 1:
            return self._left_padded(text, *args, **kwargs)
        return self.tokenizer(text, *args, add_special_tokens=add_special_tokens, **kwargs)

    def _left_padded(self, text: Any, *args: Any, padding: Any = False, return_tensors: Any = None,
                     **kwargs: Any) -> Any:
        """Each input with its own pad tokens in front (mask 0), as CogView4 encodes one prompt; a batch is
        then filled up on the right, where a causal encoder never looks back, so no row depends on the others."""
        single = isinstance(text, str)
        enc = self.tokenizer([text] if single else list(text), *args, add_special_tokens=True, **kwargs)
        pad = self.tokenizer.pad_token_id
        ids, masks = [], []
        for row in enc["input_ids"]:
            n = self.template.left_pad(len(row))
            ids.append([pad] * n + list(row))
            masks.append([0] * n + [1] * len(row))
        if padding:
            width = max(len(r) for r in ids)
            ids = [r + [pad] * (width - len(r)) for r in ids]
            masks = [m + [0] * (width - len(m)) for m in masks]
        data = {"input_ids": ids[0], "attention_mask": masks[0]} if single else {"input_ids": ids, "attention_mask": masks}
        if return_tensors == "pt":  # only then torch: the counting tokenizer (engine.token_counts) runs without it
            import torch

            data = {k: torch.tensor(v) for k, v in data.items()}
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def templated(tokenizer: Any, template: PromptTemplate, max_length: int | None = None) -> Any:
    """``tokenizer`` itself for a plain template, else a ``TemplatedTokenizer`` (limit ``max_length``).

    A plain template is wrapped too when the pipeline reads fewer tokens than the tokenizer allows (SD3's
    T5 256, HiDream's T5 and Llama-3.1 128), so queue-time checks use the slot's real limit. A processor
    (FLUX.2's ``PixtralProcessor``) renders the chat template; its text tokenizer tokenizes.
    """
    if template.is_plain():
        own = getattr(tokenizer, "model_max_length", None)
        if max_length is None or not isinstance(own, int) or own <= max_length:
            return tokenizer
        return TemplatedTokenizer(tokenizer, template, max_length)
    inner = getattr(tokenizer, "tokenizer", None) if hasattr(tokenizer, "image_processor") else None
    if inner is not None:
        return TemplatedTokenizer(inner, template, max_length, renderer=tokenizer)
    return TemplatedTokenizer(tokenizer, template, max_length)


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
    around, lower, shape = ("", ""), False, PLAIN
    if isinstance(tokenizer, TemplatedTokenizer):  # the pipeline's template goes around the ReFACT one
        around, lower, shape = tokenizer._around, tokenizer.template.lowercase, tokenizer.template
        tokenizer = tokenizer.tokenizer
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
    pads = shape.left_pad(len(full))  # CogView4: the index counts the pad tokens put in front
    full, index, offset = [tokenizer.pad_token_id] * pads + full, index + pads, offset + pads
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
