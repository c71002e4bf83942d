"""Admission checks: refuse, when a request is queued, every text the worker could not encode.

The worker tokenizes the bare prompt and the prompt inside every context template, then source,
target and contrastive texts; evaluation tokenizes the probes and the oracle. ``RequestChecker``
runs exactly those tokenizations for each (tokenizer, limit) the edit will use (one per encoder
slot), and the subject lookup in every template, so nothing fails later at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from engine.errors import TokenizationError
from engine.methods.refact.hparams import DEFAULT_TEMPLATES
from engine.request import EditRequest
from engine.tokens import locate_subject, rewriting_templates


@dataclass(frozen=True)
class TokenLimit:
    """One tokenizer the edit's texts go through and the most tokens (specials included) it takes."""

    tokenizer: Any
    limit: int
    name: str = "text_encoder"


@dataclass(frozen=True)
class TextProblem:
    """A field of a request that cannot run, and why (one line)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field} {self.message}"


def token_count(tokenizer: Any, text: str) -> int | None:
    """Token ids with special tokens, or None when the tokenizer fails on the text."""
    try:
        return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
    except Exception:  # a third-party tokenizer may raise anything on odd input
        return None


def other_texts(request: EditRequest) -> Iterator[tuple[str, str]]:
    """(field, text) of every text besides the prompt that is tokenized on its own."""
    yield "source", request.source
    yield "target", request.target
    for i, text in enumerate(request.contrastive):
        yield f"contrastive[{i}]", text
    for group, probes in (("positives", request.positives), ("negatives", request.negatives)):
        for i, probe in enumerate(probes):
            for name in ("prompt", "source", "target"):
                yield f"{group}[{i}].{name}", getattr(probe, name)
    if request.oracle:
        yield "oracle", request.oracle


@dataclass(frozen=True)
class RequestChecker:
    """The token checks of one queue: the encoders' (tokenizer, limit) pairs and the templates."""

    limits: tuple[TokenLimit, ...]
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES)

    @classmethod
    def single(cls, tokenizer: Any, limit: int, templates: Sequence[str] = DEFAULT_TEMPLATES) -> "RequestChecker":
        return cls((TokenLimit(tokenizer, limit),), tuple(templates))

    def problems(self, request: EditRequest) -> list[TextProblem]:
        """Every field that the worker or the evaluation could not encode (empty when all is fine)."""
        out: list[TextProblem] = []
        seen: set[str] = set()
        many = len(self.limits) > 1
        for lim in self.limits:
            where = f" ({lim.name})" if many else ""
            for problem in self._prompt_problems(request, lim, where):
                if problem.field not in seen:
                    seen.add(problem.field)
                    out.append(problem)
            for name, text in other_texts(request):
                if name in seen:
                    continue
                n = token_count(lim.tokenizer, text)
                if n is None:
                    out.append(TextProblem(name, f"cannot be tokenized{where}; remove unusual characters"))
                    seen.add(name)
                elif n > lim.limit:
                    out.append(TextProblem(name, f"is {n} tokens long{where}, over the limit of {lim.limit}; shorten it"))
                    seen.add(name)
        return out

    def _prompt_problems(self, request: EditRequest, lim: TokenLimit, where: str) -> Iterator[TextProblem]:
        templates = rewriting_templates(self.templates)
        longest, longest_template = 0, "{}"
        for template in templates:
            n = token_count(lim.tokenizer, template.replace("{}", request.prompt))
            if n is None:
                yield TextProblem("prompt", f"cannot be tokenized{where}; remove unusual characters")
                return
            if n > longest:
                longest, longest_template = n, template
        if longest > lim.limit:
            bare = token_count(lim.tokenizer, request.prompt)
            inside = "" if longest_template == "{}" else f" inside the template {longest_template!r} (bare: {bare})"
            yield TextProblem(
                "prompt", f"is {longest} tokens long{inside}{where}, over the limit of {lim.limit}; shorten it")
            return
        for template in templates:
            try:
                locate_subject(lim.tokenizer, template, request.prompt, request.subject, lim.limit)
            except TokenizationError as exc:
                if request.subject is None:
                    yield TextProblem(
                        "subject",
                        f"(default {request.subject_text!r}) does not map to whole tokens in {template!r}{where}; "
                        "pass --subject with the part of the prompt to edit")
                else:
                    yield TextProblem("subject", f"cannot be used{where}: {exc}")
                return
