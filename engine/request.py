"""Edit requests: what to change, and the probes that measure whether it worked."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any


class RequestError(ValueError):
    """An edit request is malformed (empty field, subject not in prompt, ...)."""


def _invisible(ch: str) -> bool:
    # whitespace, controls (C0/C1), format characters (zero-width space/joiner, BOM, bidi marks)
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def clean_text(text: str) -> str:
    """NFC-normalize and strip outer whitespace, control and zero-width characters; inner text
    (incl. non-ASCII) is kept intact. A field made only of such characters becomes empty."""
    text = unicodedata.normalize("NFC", text)
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


@dataclass(frozen=True)
class Probe:
    """One evaluation prompt with its two comparison texts.

    For a positive (generality) probe the edit should move the image from ``source`` to ``target``;
    for a negative (specificity) probe the image should stay closer to ``source``.
    """

    prompt: str
    source: str
    target: str

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "source": self.source, "target": self.target}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Probe":
        return cls(clean_text(d["prompt"]), clean_text(d["source"]), clean_text(d["target"]))


@dataclass(frozen=True)
class EditRequest:
    """A fact edit: make ``prompt`` (whose key token is the last token of ``subject``) mean ``target``
    instead of ``source``. ``contrastive`` texts are pushed away in addition to ``source``."""

    prompt: str
    source: str
    target: str
    subject: str | None = None
    contrastive: tuple[str, ...] = ()
    positives: tuple[Probe, ...] = ()
    negatives: tuple[Probe, ...] = ()
    oracle: str | None = None
    name: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", clean_text(self.prompt or ""))
        object.__setattr__(self, "source", clean_text(self.source or ""))
        object.__setattr__(self, "target", clean_text(self.target or ""))
        if self.subject is not None:
            object.__setattr__(self, "subject", clean_text(self.subject))
        object.__setattr__(self, "contrastive", tuple(clean_text(c) for c in self.contrastive))
        object.__setattr__(self, "positives", tuple(self.positives))
        object.__setattr__(self, "negatives", tuple(self.negatives))

    @property
    def subject_text(self) -> str:
        """The subject whose last token is the key (default: the prompt without trailing punctuation)."""
        from engine.tokens import default_subject

        return self.subject if self.subject else default_subject(self.prompt)

    def validate(self) -> None:
        """Raise RequestError with a one-line reason if the request cannot be edited."""
        for name in ("prompt", "source", "target"):
            if not getattr(self, name):
                raise RequestError(f"{name} is empty; every edit needs a prompt, a source and a target")
        if self.subject is not None and not self.subject:
            raise RequestError("subject is empty; leave it out to use the whole prompt")
        if self.subject_text.lower() not in self.prompt.lower():
            raise RequestError(
                f"subject {self.subject_text!r} does not occur in prompt {self.prompt!r}; "
                "pass a subject that is part of the prompt"
            )
        if self.source == self.target:
            raise RequestError(f"source and target are the same text ({self.source!r})")
        if any(not c for c in self.contrastive):
            raise RequestError("a contrastive text is empty")

    def key(self) -> tuple[str, str, str, str]:
        """Identity used to report duplicate requests."""
        return (self.prompt.lower(), self.subject_text.lower(), self.source.lower(), self.target.lower())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt": self.prompt, "source": self.source, "target": self.target}
        if self.subject is not None:
            d["subject"] = self.subject
        if self.contrastive:
            d["contrastive"] = list(self.contrastive)
        if self.positives:
            d["positives"] = [p.to_dict() for p in self.positives]
        if self.negatives:
            d["negatives"] = [p.to_dict() for p in self.negatives]
        if self.oracle:
            d["oracle"] = self.oracle
        if self.name:
            d["name"] = self.name
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditRequest":
        return cls(
            prompt=d.get("prompt", ""),
            source=d.get("source", ""),
            target=d.get("target", ""),
            subject=d.get("subject"),
            contrastive=tuple(d.get("contrastive", ())),
            positives=tuple(Probe.from_dict(p) for p in d.get("positives", ())),
            negatives=tuple(Probe.from_dict(p) for p in d.get("negatives", ())),
            oracle=d.get("oracle"),
            name=d.get("name"),
            extra=dict(d.get("extra", {})),
        )
