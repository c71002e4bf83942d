"""Admission checks: refuse, when a request is queued, every text the worker could not encode.

The worker tokenizes the bare prompt and the prompt inside every context template, then source,
target and contrastive texts; evaluation tokenizes the probes and the oracle. ``RequestChecker``
runs exactly those tokenizations for each (tokenizer, limit) the edit will use (one per encoder
slot), and the subject lookup in every template, so nothing fails later at run time.

Memory admission: ``MomentMemory`` is the figure of one second moment C (width² x the bytes of its
storage, plus the fp64 solve workspace) and ``check_moment_memory`` refuses, in one line and before
anything is allocated, a C that the device (and, on CUDA, the host that factors it) cannot hold.
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


# ----- memory admission: a second moment C that the device cannot hold ---------------------------
DTYPE_BYTES = {"float32": 4, "float64": 8}
GIB = 2**30


def size_text(n_bytes: int) -> str:
    """"12.0 GiB" from 1 GiB up, else "0.5 MiB"."""
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


@dataclass(frozen=True)
class MomentMemory:
    """The memory one second moment C of a ``width``-wide key takes, in bytes.

    ``store``: C itself, width² × the bytes of its storage dtype (the accumulator during collection,
    then the cached C). ``solve``: the float64 workspace of one solve against C: the upcast copy that
    is factored in place (width² × 8, the cached Cholesky factor) or, for a rank-k low-rank + diagonal
    C, its eigenvectors and Woodbury terms (about width × 3k × 8).
    """

    width: int
    storage: str = "float64"
    rank: int = 0

    @property
    def store(self) -> int:
        return self.width * self.width * DTYPE_BYTES[self.storage]

    @property
    def solve(self) -> int:
        if self.rank > 0:
            return self.width * (3 * self.rank + 4) * 8 + self.rank * self.rank * 8
        return self.width * self.width * 8

    @property
    def total(self) -> int:
        return self.store + self.solve

    def describe(self) -> str:
        """"fp32 C 4.0 GiB + fp64 solve workspace 8.0 GiB"."""
        kind = f"rank-{self.rank} + diagonal solve" if self.rank > 0 else "solve workspace"
        return f"fp{DTYPE_BYTES[self.storage] * 8} C {size_text(self.store)} + fp64 {kind} {size_text(self.solve)}"

    def line(self, device: str, free_bytes: int | None = None) -> str:
        """The one line stated before a long collection."""
        free = "" if free_bytes is None else f" ({size_text(free_bytes)} free)"
        return f"second moment of a {self.width}-wide key: {size_text(self.total)} on {device}{free}: {self.describe()}"


def free_memory(device: Any) -> int:
    """Bytes free on ``device`` (a torch.device, or a name: "cpu", "cuda", "cuda:N"): CUDA's
    mem_get_info, else the host's available memory (/proc/meminfo's MemAvailable, else psutil, else
    sysconf's page counts)."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with accelerate; a bare install still has sysconf
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_moment_memory(need: MomentMemory, device: Any, free_bytes: int | None = None,
                        host_free_bytes: int | None = None) -> int:
    """``need.total`` when C fits; otherwise EngineError in one line naming the figure, the free
    memory and the ways out. On a CPU device C and its solve share the host; on CUDA the device holds
    the accumulator (``need.store``) and the host C and its solve (the factor is computed on the host).
    ``free_bytes`` / ``host_free_bytes`` override the measurements."""
    from engine.errors import EngineError

    kind = getattr(device, "type", str(device))
    free = free_memory(device) if free_bytes is None else int(free_bytes)
    checks = [(kind, need.total, free, need.describe())]
    if kind == "cuda":
        host = free_memory("cpu") if host_free_bytes is None else int(host_free_bytes)
        checks = [(kind, need.store, free, f"the fp{DTYPE_BYTES[need.storage] * 8} accumulator"),
                  ("cpu", need.total, host, need.describe())]
    for where, bytes_, have, what in checks:
        if bytes_ > have:
            hint = "" if need.rank > 0 else " or a low-rank C (--moment-rank 256)"
            raise EngineError(
                f"the second moment of a {need.width}-wide key needs {size_text(bytes_)} ({what}) "
                f"but {where} has {size_text(have)} free; use a device with more memory{hint}"
            )
    return need.total
