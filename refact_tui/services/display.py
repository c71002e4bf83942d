"""User text made safe to show: terminal control characters neutralised, rich markup escaped.

Stored text is never changed (the database keeps it byte-exact); these functions only build what a
table, a progress line, an error or a TUI widget prints. Every character that a terminal could act
on (C0 controls such as ESC and BEL, DEL, C1 controls, and the bidi / zero-width formatting
characters that reorder or hide text) is shown as a visible ``\\xNN`` / ``\\uNNNN`` escape, so an
``ESC ] 0; ... BEL`` title sequence or a colour code reaches the terminal as plain characters.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from rich.text import Text

# Line breaks become visible too: a one-line field must stay one line on screen.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)
_KEEP_MULTILINE = {"\n", "\t"}


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _is_unsafe(ch: str) -> bool:
    return bool(_UNSAFE.match(ch)) or unicodedata.category(ch) in ("Cc", "Cs")


def display_text(text: Any, *, multiline: bool = False) -> str:
    """``text`` with every terminal control / invisible formatting character shown as an escape.

    None shows as ''. With ``multiline`` newlines and tabs are kept (log bodies, tracebacks).
    """
    if text is None:
        return ""
    s = str(text)
    out = []
    for ch in s:
        if _is_unsafe(ch) and not (multiline and ch in _KEEP_MULTILINE):
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


_BRACKET = re.compile(r"(\\*)\[")
_TAG_BODY = re.compile(r"[a-z#/@][^[]*?]")  # what rich reads as a tag after "["


def markup_escape(text: Any) -> str:
    """``display_text`` escaped for a rich markup string (``[/]`` in a prompt prints as ``[/]``).

    Every ``[`` is escaped with the backslashes before it kept: rich prints k backslashes before a
    tag-like ``[`` as k // 2 (an odd k escapes the tag) and before any other ``[`` as k - 1
    (``rich.markup.escape`` only handles the first case, so ``\\[x`` lost its backslash). Put the
    result at the end of a markup string or before plain text, not right before a tag: a trailing
    backslash would escape that tag (style user text with ``plain`` instead).
    """
    safe = display_text(text)

    def fix(m: re.Match[str]) -> str:
        n = len(m.group(1))
        tag_like = _TAG_BODY.match(safe, m.end()) is not None
        return "\\" * (2 * n + 1 if tag_like else n + 1) + "["

    return _BRACKET.sub(fix, safe)


def plain(text: Any, style: str = "", *, multiline: bool = False) -> Text:
    """A rich ``Text`` (never parsed as markup, by rich or by Textual) of the display-safe text."""
    return Text(display_text(text, multiline=multiline), style=style)


def quoted(text: Any) -> str:
    """repr-like quoting for messages: ``'The [b] prince'`` with controls escaped (no markup escape)."""
    return "'" + display_text(text).replace("'", "\\'") + "'"
