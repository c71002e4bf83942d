"""Shared by the bench scripts: rewrite one script's section of BENCHMARKS.md in place."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, block: str, start: str, end: str | None = None, heading: str | None = None) -> None:
    """Put ``block`` where the section between ``start`` and ``end`` stands (or, with ``end`` None,
    from ``start`` up to the next ``## `` heading); append it when the file has no such section.
    ``heading`` also finds an older section that lost its ``start`` marker."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    opener = start if start in text else heading if heading and heading in text else None
    if opener is not None and end is not None and end in text.split(opener, 1)[1]:
        head, rest = text.split(opener, 1)
        text = head + block + rest.split(end, 1)[1]
    elif opener is not None and end is None:
        head, _, rest = text.partition(opener)
        nxt = rest.find("\n## ")
        text = head + block + (rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block + ("" if block.endswith("\n") else "\n")
    path.write_text(text, encoding="utf-8")
