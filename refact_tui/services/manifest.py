"""The deltas manifest of `refact export --deltas-only`: its schema, checked before anything is read.

A manifest names the base model's encoder hash, then per edit a delta file (a relative path that
must stay inside the manifest's folder), its sha256, the weights hash before the delta and the
weights hash after it. ``apply-deltas`` checks the base, each file, and the weights after every
delta, so a delta whose bytes were changed (even with its sha256 updated to match) is refused at
the first step whose result differs from the recorded one. Every malformed field is refused with
one line naming it (``edits[2].layer must be an integer or null, got '7'``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from engine.errors import EngineError

FORMATS = ("refact-deltas/1", "refact-deltas/2")
MAX_BYTES = 16 * 2**20      # a manifest of 100,000 edits is a few tens of MB less than this
MAX_DEPTH = 16              # the real schema nests 5 levels (request -> positives -> probe)
MAX_EDITS = 100_000
_HEX = re.compile(r"[0-9a-f]{8,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(EngineError):
    """A deltas manifest is malformed, or names a file outside its folder."""


@dataclass(frozen=True)
class ManifestEntry:
    """One delta of the chain, validated."""

    index: int
    seq: int | None
    file: str
    path: Path                      # resolved, inside the manifest's folder
    sha256: str
    layer: int | None
    module: str | None
    before_hash: str | None         # weights hash before this delta (None in refact-deltas/1)
    weights_hash: str | None        # weights hash after this delta
    weights_hashes: dict[str, str] = field(default_factory=dict)  # per component, when recorded


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; ``raw`` is the parsed JSON."""

    path: Path
    format: str
    base_hash: str
    base_hashes: dict[str, str]
    final_hash: str | None
    entries: list[ManifestEntry]
    raw: dict[str, Any]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object"


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (iterative: a hostile file must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, d + 1) for c in children)
    return deepest


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, what: str, value: Any) -> ManifestError:
        return ManifestError(f"manifest {self.path}: {where} must be {what}, got {_kind(value)}; re-export it")

    def hash(self, value: Any, where: str, *, optional: bool = False, sha: bool = False) -> str | None:
        if value is None and optional:
            return None
        pattern = _SHA256 if sha else _HEX
        if not isinstance(value, str) or not pattern.fullmatch(value):
            what = "a sha256 hex digest" if sha else "a hex hash"
            raise self.fail(where, what + (" or null" if optional else ""), value)
        return value

    def hashes(self, value: Any, where: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, "an object of component -> hash", value)
        return {str(k): self.hash(v, f"{where}.{k}") for k, v in value.items()}  # type: ignore[misc]

    def int_or_null(self, value: Any, where: str, low: int = 0) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**9:
            raise self.fail(where, f"an integer >= {low} or null", value)
        return value

    def text_or_null(self, value: Any, where: str) -> str | None:
        if value is not None and (not isinstance(value, str) or len(value) > 1000):
            raise self.fail(where, "text or null", value)
        return value

    def inside(self, value: Any, where: str) -> Path:
        """The resolved path of a delta file; refused unless it stays inside the manifest's folder."""
        if not isinstance(value, str) or not value or "\x00" in value or len(value) > 1000:
            raise self.fail(where, "a relative file path", value)
        posix, windows = PurePosixPath(value), PureWindowsPath(value)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts \
                or ".." in windows.parts:
            raise ManifestError(f"manifest {self.path}: {where} {value!r} leaves the manifest's folder "
                                "(absolute or '..' path); only files next to the manifest are read")
        folder = self.path.parent.resolve()
        resolved = (folder / value).resolve()
        if resolved != folder and folder not in resolved.parents:
            raise ManifestError(f"manifest {self.path}: {where} {value!r} resolves outside the manifest's "
                                "folder (a link?); only files next to the manifest are read")
        return resolved


LEGACY_FORMAT = "refact-deltas/1"
LEGACY_FLAG = "--legacy-manifest"


def parse_manifest(text: str, path: Path, *, legacy: bool = False) -> Manifest:
    """Validate manifest JSON text against the schema (ManifestError naming the first bad field).

    ``refact-deltas/2`` must carry every hash of its chain (each edit's before_hash and weights_hash,
    and final_weights_hash): without them a delta altered together with its sha256 would pass.
    ``refact-deltas/1`` records no before_hash; it is read only with ``legacy``."""
    c = _Checker(path)
    try:
        data = json.loads(text)
    except RecursionError:
        raise ManifestError(f"manifest {path} is nested too deeply; it is not a refact deltas manifest") from None
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"manifest {path} is not valid JSON ({first}); re-export it") from None
    if _depth(data) > MAX_DEPTH:
        raise ManifestError(f"manifest {path} is nested more than {MAX_DEPTH} levels deep; "
                            "it is not a refact deltas manifest")
    if not isinstance(data, dict):
        raise c.fail("the document", "an object", data)
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise ManifestError(f"{path} is not a refact deltas manifest (format {' or '.join(FORMATS)} expected, "
                            f"got {_kind(fmt)})")
    if fmt == LEGACY_FORMAT and not legacy:
        raise ManifestError(f"{path} is a {LEGACY_FORMAT} manifest: it records no weights hash before each delta, "
                            "so the chain from the base cannot be checked; re-export it, or pass "
                            f"{LEGACY_FLAG} to apply it with only the files' sha256 and the weights hashes it "
                            "records checked")
    chained = fmt != LEGACY_FORMAT  # refact-deltas/2: every hash of the chain is required
    base = data.get("base")
    if not isinstance(base, dict):
        raise c.fail("base", "an object", base)
    base_hash = c.hash(base.get("encoder_hash"), "base.encoder_hash")
    base_hashes = c.hashes(base.get("weights_hashes"), "base.weights_hashes")
    final = c.hash(data.get("final_weights_hash"), "final_weights_hash", optional=not chained)
    edits = data.get("edits")
    if not isinstance(edits, list):
        raise c.fail("edits", "a list", edits)
    if len(edits) > MAX_EDITS:
        raise ManifestError(f"manifest {path} lists {len(edits)} edits, more than {MAX_EDITS}")
    entries, files = [], set()
    for i, e in enumerate(edits):
        where = f"edits[{i}]"
        if not isinstance(e, dict):
            raise c.fail(where, "an object with file and sha256", e)
        resolved = c.inside(e.get("file"), f"{where}.file")
        if resolved in files:
            raise ManifestError(f"manifest {path}: {where}.file {e['file']!r} is listed twice")
        files.add(resolved)
        for name in ("request", "hparams"):
            if e.get(name) is not None and not isinstance(e[name], dict):
                raise c.fail(f"{where}.{name}", "an object", e[name])
        p_target = e.get("p_target")
        if p_target is not None and (isinstance(p_target, bool) or not isinstance(p_target, (int, float))):
            raise c.fail(f"{where}.p_target", "a number or null", p_target)
        entries.append(ManifestEntry(
            index=i,
            seq=c.int_or_null(e.get("seq"), f"{where}.seq", low=1),
            file=e["file"],
            path=resolved,
            sha256=c.hash(e.get("sha256"), f"{where}.sha256", sha=True),  # type: ignore[arg-type]
            layer=c.int_or_null(e.get("layer"), f"{where}.layer"),
            module=c.text_or_null(e.get("module"), f"{where}.module"),
            before_hash=c.hash(e.get("before_hash"), f"{where}.before_hash", optional=not chained),
            weights_hash=c.hash(e.get("weights_hash"), f"{where}.weights_hash", optional=not chained),
            weights_hashes=c.hashes(e.get("weights_hashes"), f"{where}.weights_hashes"),
        ))
    _check_chain(path, base_hash, entries, final)  # type: ignore[arg-type]
    return Manifest(path, fmt, base_hash, base_hashes, final, entries, data)  # type: ignore[arg-type]


def _check_chain(path: Path, base_hash: str, entries: list[ManifestEntry], final: str | None) -> None:
    """Each delta must start where the previous one ended (refact-deltas/2 records both ends)."""
    previous = base_hash
    for e in entries:
        if e.before_hash is not None and previous is not None and e.before_hash != previous:
            raise ManifestError(f"manifest {path}: edits[{e.index}].before_hash does not match the weights "
                                "hash after the previous delta; the edit chain was altered")
        previous = e.weights_hash
    if entries and final is not None and previous is not None and final != previous:
        raise ManifestError(f"manifest {path}: final_weights_hash does not match the last edit's weights_hash; "
                            "the edit chain was altered")


def load_manifest(path: Path | str, *, legacy: bool = False) -> Manifest:
    """Read and validate a manifest file (ManifestError: missing, too big, not UTF-8, malformed; a
    refact-deltas/1 manifest unless ``legacy``)."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found; pass the manifest.json written by "
                            "`refact export --deltas-only`")
    if path.stat().st_size > MAX_BYTES:
        raise ManifestError(f"manifest {path} is over {MAX_BYTES // 2**20} MB; it is not a deltas manifest")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path} is not UTF-8 (bad byte at offset {exc.start}); re-export it") from None
    return parse_manifest(text, path, legacy=legacy)


def verify_step(manifest: Manifest, entry: ManifestEntry, weights_hash: str, hashes: dict[str, str]) -> None:
    """Refuse (ManifestError) when the weights after ``entry``'s delta differ from the recorded ones."""
    if entry.weights_hash is not None and weights_hash != entry.weights_hash:
        raise ManifestError(
            f"applying {entry.file} (edits[{entry.index}]) gave weights {weights_hash[:12]}, but the manifest "
            f"recorded {entry.weights_hash[:12]}; this delta is not the one exported, nothing was written")
    for name, want in entry.weights_hashes.items():
        got = hashes.get(name)
        if got is not None and got != want:
            raise ManifestError(
                f"applying {entry.file} (edits[{entry.index}]) changed {name} to {got[:12]}, but the manifest "
                f"recorded {want[:12]}; this delta is not the one exported, nothing was written")
