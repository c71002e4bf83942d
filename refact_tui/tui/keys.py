"""Every key of the TUI in one table: the footer bindings and the command palette are built from it."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

SCREENS = Binding.Group("Screens", compact=True)
EVERY_EDIT = Binding.Group("Every edit", compact=True)


@dataclass(frozen=True)
class Key:
    """One action: its key(s), the short footer label and its command palette entry."""

    keys: str  # Textual key list, e.g. "question_mark,f1"
    action: str  # action string run on the screen that owns the key (or on the app for APP_KEYS)
    footer: str  # short: every screen's footer must fit in 100 columns
    palette: str  # command palette text
    about: str  # command palette help line
    show: bool = True  # False: only in the help screen and the palette
    group: Binding.Group | None = None  # shown as one footer entry ("1234 Screens")


APP_KEYS: tuple[Key, ...] = (
    Key("1", "switch_mode('queue')", "Queue", "Show queue", "Jobs waiting, running or failed", group=SCREENS),
    Key("2", "switch_mode('live')", "Live", "Show live edit", "Loss and P(target) of the edit being optimized",
        group=SCREENS),
    Key("3", "switch_mode('metrics')", "Metrics", "Show metrics",
        "Efficacy, generality, specificity, F1, retention, CLIP score", group=SCREENS),
    Key("4", "switch_mode('history')", "History", "Show history",
        "The edit log with rollback, replay, fork and export", group=SCREENS),
    Key("5", "switch_mode('bench')", "Bench", "Show bench runs",
        "Stored `refact bench` runs: paper-layout aggregates and per-row results", group=SCREENS),
    Key("w", "toggle_worker", "Worker", "Start / stop worker", "Run the queue inside the TUI"),
    Key("question_mark,f1", "show_help", "Help", "Help", "Every key"),
    Key("q", "quit", "Quit", "Quit", "Leave the TUI (a worker started here stops between steps)"),
)

def _filter(what: str) -> Key:
    return Key("slash", "filter", "Filter", f"Filter {what}", f"Show only the {what} that contain the typed words",
               show=False)


SCREEN_KEYS: dict[str, tuple[Key, ...]] = {
    "queue": (
        Key("a", "add", "Add", "Add edit", "Queue one edit request (form)"),
        Key("i", "import_file", "Import", "Import edits from file", "RoAD / TIMED CSV or JSONL"),
        Key("u", "move(-1)", "Up", "Move job up", "Earlier in the queue (every marked job)", show=False),
        Key("d", "move(1)", "Down", "Move job down", "Later in the queue (every marked job)", show=False),
        Key("c", "cancel_job", "Cancel", "Cancel job", "Cancel the selected (or every marked) queued or running job"),
        Key("r", "retry_job", "Retry", "Retry job", "Put failed or cancelled jobs back in the queue"),
        Key("x", "remove_job", "Remove", "Remove job", "Delete the selected (or every marked) job that is not running",
            show=False),
        Key("X", "clear_queue", "Clear", "Clear queue", "Delete every queued job of this history", show=False),
        Key("space", "toggle_mark", "Mark", "Mark job", "Mark or unmark the selected job (actions apply to every "
            "marked job)", show=False),
        Key("v", "mark_range", "Mark range", "Mark range", "Mark every job from the last mark to the cursor",
            show=False),
        _filter("jobs"),
    ),
    "live": (
        Key("c", "cancel_running", "Cancel edit", "Cancel running edit", "Stop the edit being optimized"),
        _filter("events"),
    ),
    "metrics": (
        Key("t", "evaluate('text', False)", "Text eval", "Text evaluation", "Text-space metrics of the latest edit"),
        Key("i", "evaluate('image', False)", "Image eval", "Image evaluation",
            "Image-space metrics of the latest edit"),
        Key("T", "evaluate('text', True)", "Text eval (all)", "Text evaluation of every edit",
            "Text-space metrics of each applied edit", group=EVERY_EDIT),
        Key("I", "evaluate('image', True)", "Image eval (all)", "Image evaluation of every edit",
            "Image-space metrics of each applied edit", group=EVERY_EDIT),
    ),
    "history": (
        Key("b", "rollback", "Rollback", "Rollback to selected edit", "Later edits are marked rolled back"),
        Key("r", "rollforward", "Roll fwd", "Roll forward",
            "Undo a rollback: re-apply the rolled-back edits up to the selected one (default: all)"),
        Key("h", "histories", "Histories", "Show histories", "Every history: parent, fork point, head, queued "
            "jobs; check one out"),
        Key("p", "replay", "Replay", "Replay history", "Re-apply the stored deltas into a new history", show=False),
        Key("o", "reoptimize", "Re-optimize", "Re-optimize history",
            "Queue every applied request again in a new history", show=False),
        Key("f", "fork", "Fork", "Fork at selected edit", "New history from the selected edit"),
        Key("e", "export", "Export", "Export edited pipeline", "save_pretrained of base + applied edits", show=False),
        Key("O", "open_grid", "Open grid", "Open before/after grid", "The selected edit's grid PNG in the system "
            "image viewer", show=False),
        _filter("edits"),
    ),
    "bench": (
        Key("enter", "open_run", "Open", "Open bench run", "Show the selected run's rows (tab goes back)"),
        Key("space", "toggle_mark", "Mark", "Mark bench run", "Mark a run to compare (two at most)", show=False),
        Key("c", "compare", "Compare", "Compare two bench runs", "The two marked runs (or the selected one and "
            "the one below) side by side"),
        Key("R", "rerun", "Rerun", "Rerun bench run", "Run the selected run again with its stored options"),
        _filter("rows"),
    ),
}


def key_label(keys: str) -> str:
    """How a Textual key list reads for a person: 'question_mark,f1' -> '? / f1'."""
    names = {"question_mark": "?", "slash": "/", "space": "space", "escape": "esc"}
    return " / ".join(names.get(k, k) for k in keys.split(","))


def bindings(keys: tuple[Key, ...]) -> list[Binding]:
    """Textual bindings of ``keys`` (for a class's BINDINGS)."""
    return [Binding(k.keys, k.action, k.footer, show=k.show, group=k.group) for k in keys]
