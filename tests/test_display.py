"""The display helper: control characters become visible escapes, markup is shown literally."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from refact_tui.services.display import display_text, markup_escape, plain, quoted


def render(markup: str) -> str:
    console = Console(file=io.StringIO(), width=10_000, color_system=None, highlight=False, soft_wrap=True)
    console.print(markup, end="")
    return console.file.getvalue()


def test_terminal_sequences_are_neutralised():
    assert display_text("a\x1b]0;title\x07b") == "a\\x1b]0;title\\x07b"
    assert display_text("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert display_text("x\x9b31m\x85\x00\x7f") == "x\\x9b31m\\x85\\x00\\x7f"
    assert display_text("evil\u202eoc.exe\u200b") == "evil\\u202eoc.exe\\u200b"
    assert display_text("two\nlines\ttab") == "two\\nlines\\ttab"
    assert display_text("two\nlines", multiline=True) == "two\nlines"
    assert display_text("Schröder 漢 🦩 [/]") == "Schröder 漢 🦩 [/]"  # printable text is untouched
    assert display_text(None) == "" and quoted("it's") == "'it\\'s'"
    assert plain("[bold]x\x1b").plain == "[bold]x\\x1b"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
       | st.lists(st.sampled_from(["[/]", "[bold]", "[", "]", "\\", "\x1b", "\x07", "[/red]", "x"])).map("".join))
def test_markup_escape_prints_exactly_the_display_text(text):
    assert render(markup_escape(text)) == display_text(text)
    out = render(f"[bold]x {markup_escape(text)}")  # as user text sits at the end of our markup
    assert out == "x " + display_text(text)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in out)
