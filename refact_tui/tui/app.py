"""The Textual application: four screens over one workspace, a store poller and thread workers."""

from __future__ import annotations

import importlib
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import sqlite_utils
from textual import on
from textual.app import App
from textual.worker import Worker, WorkerState

from refact_tui.services.dashboard_snapshot import worker_info
from refact_tui.services.display import display_text, markup_escape
from refact_tui.services.workspace import DB_NAME
from refact_tui.tui.commands import RefactCommands
from refact_tui.tui.errors import one_line, tui_hint
from refact_tui.tui.keys import APP_KEYS, bindings
from refact_tui.tui.messages import ActionDone, StoreNudge
from refact_tui.tui.poller import StorePoller
from refact_tui.tui.screens.base import DashboardScreen
from refact_tui.tui.screens.bench import BenchScreen
from refact_tui.tui.screens.confirm import ConfirmModal
from refact_tui.tui.screens.error import ErrorModal
from refact_tui.tui.screens.help import HelpScreen
from refact_tui.tui.screens.history import HistoryScreen
from refact_tui.tui.screens.live import LiveScreen
from refact_tui.tui.screens.metrics import MetricsScreen
from refact_tui.tui.screens.queue import QueueScreen
from refact_tui.tui.summaries import summarize
from store.db import open_db


class ServiceUnavailable(Exception):
    """The service function an action needs is not part of this installation."""


def load_service(module: str, func: str) -> Callable[..., Any]:
    """``refact_tui.services.<module>.<func>``, imported when the action runs (never at startup)."""
    try:
        mod = importlib.import_module(f"refact_tui.services.{module}")
    except ImportError as exc:
        raise ServiceUnavailable(f"refact_tui.services.{module} cannot be imported ({exc}); reinstall refact-tui") from None
    fn = getattr(mod, func, None)
    if fn is None:
        raise ServiceUnavailable(f"refact_tui.services.{module}.{func} is missing; update refact-tui")
    return fn


class RefactApp(App[None]):
    """refact-tui on one workspace. ``clock`` supplies 'now' (tests freeze it)."""

    CSS_PATH = "app.tcss"
    TITLE = "refact-tui"
    MODES = {"queue": QueueScreen, "live": LiveScreen, "metrics": MetricsScreen, "history": HistoryScreen,
             "bench": BenchScreen}
    DEFAULT_MODE = "queue"
    COMMANDS = App.COMMANDS | {RefactCommands}
    # "5": the Bench screen (kept out of the footer and help table so the other screens stay as they were)
    BINDINGS = bindings(APP_KEYS)

    def __init__(self, workspace_root: Path, *, clock: Callable[[], float] = time.time,
                 poll_interval: float = 0.25, device: str = "auto", mode: str = "queue") -> None:
        super().__init__()
        self.workspace_root = Path(workspace_root).expanduser().absolute()
        self.clock = clock
        self.poll_interval = poll_interval
        self.device = device
        self.start_mode = mode
        self.poller: StorePoller | None = None
        self.stop_event = threading.Event()
        self.worker_running = False
        self._last_draw = 0.0
        self._last_poll_error: str | None = None
        self.busy: dict[Worker, str] = {}  # running actions -> label, shown with a spinner in the header
        self._spin = 0
        self._sub_base = ""
        self.reading = False  # a reader thread is fetching the current screen's data

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def read_db(self) -> sqlite_utils.Database | None:
        return self.poller.db if self.poller else None

    def on_mount(self) -> None:
        self._sub_base = self.workspace_root.name
        self._show_busy()
        self.set_interval(0.1, self._tick_spinner)
        try:
            db_path = self.workspace_root / DB_NAME
            if not db_path.is_file():
                raise FileNotFoundError(db_path)
            self.poller = StorePoller(db_path)
        except Exception as exc:  # noqa: BLE001 - shown, never fatal
            message = (f"no workspace at {self.workspace_root}; run `refact init --model PATH` first"
                       if isinstance(exc, FileNotFoundError) else one_line(exc))
            self.push_screen(ErrorModal("Cannot open the workspace", message))
            return
        self.switch_mode(self.start_mode)
        self.set_interval(self.poll_interval, self.poll)
        self.call_after_refresh(self.poll)

    def on_unmount(self) -> None:
        self.stop_event.set()
        if self.poller is not None:
            self.poller.close()

    def request_refresh(self) -> None:
        """Re-read the store at the next poll even if no other connection wrote."""
        if self.poller is not None:
            self.poller.force()
            self.call_after_refresh(self.poll)

    def dashboard_screen(self) -> DashboardScreen | None:
        """The screen of the current mode (below any modal on top of it)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    def poll(self) -> None:
        """Timer tick (<= 4 Hz): when the database changed, read the current screen's data on a reader
        thread and draw it when it arrives, so the UI thread never waits for SQLite and JSON parsing."""
        if self.poller is None or self.reading:
            return
        try:
            screen = self.dashboard_screen()
            forced = self.poller.forced
            changed = self.poller.changed()
        except (sqlite3.Error, Exception) as exc:  # noqa: BLE001 - a bad read must not kill the UI
            self._read_failed(exc)
            return
        now = time.monotonic()
        if changed and not forced and screen is not None and now - screen.drawn_at < screen.MIN_REDRAW_S:
            # Another process writes (a worker's steps): screens that do not follow steps redraw at
            # their own slower pace.
            self.poller.force()
            changed = False
        # A running edit's elapsed time advances without writes: redraw it about once a second.
        tick = screen is not None and screen.ticking and now - self._last_draw >= 1.0
        if screen is None or not screen.is_mounted:
            if changed:  # too early (the screen is still mounting): keep the read for the next tick
                self.poller.force()
            return
        if not (changed or tick):
            return
        self._last_draw = screen.drawn_at = now
        self.reading = True
        self.run_worker(partial(self._read, screen, self.clock()), name="read", group="reads", thread=True,
                        exit_on_error=False)

    def _read(self, screen: DashboardScreen, now: float) -> None:
        """Reader thread: its own read-only connection (SQLite connections belong to one thread)."""
        try:
            db = open_db(self.poller.db_path, read_only=True)
            try:
                data = screen.read(db, now)
            finally:
                db.conn.close()
        except Exception as exc:  # noqa: BLE001 - shown once, retried at the next tick
            self.call_from_thread(self._read_failed, exc)
            return
        self.call_from_thread(self._draw, screen, data)

    def _draw(self, screen: DashboardScreen, data: Any) -> None:
        self.reading = False
        if not screen.is_mounted:
            return
        try:
            screen.draw(data)
        except (sqlite3.Error, Exception) as exc:  # noqa: BLE001 - a bad read must not kill the UI
            self._read_failed(exc)
            return
        self._last_poll_error = None
        view = getattr(screen, "view", None)
        hist = getattr(view, "history", None)
        if hist is not None:
            self._sub_base = display_text(f"{self.workspace_root.name} · history '{hist.name}'")
            self._show_busy()

    def _read_failed(self, exc: BaseException) -> None:
        self.reading = False
        message = f"cannot read the workspace: {one_line(exc)}"
        if message != self._last_poll_error:  # once, not at every tick
            self.notify(message, severity="error", timeout=6)
        self._last_poll_error = message
        if self.poller is not None:
            self.poller.force()

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until no store read is pending or running (tests and snapshots use it)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while (self.reading or (self.poller is not None and self.poller.forced)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    @on(StoreNudge)
    def _on_nudge(self) -> None:
        # Redraw at the next timer tick, not now: bursts of step events stay at <= 4 redraws/s.
        if self.poller is not None:
            self.poller.force()

    # --- actions ---------------------------------------------------------------------------------

    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.current_mode))

    # --- "working…" ------------------------------------------------------------------------------

    SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def _show_busy(self) -> None:
        if not self.busy:
            self.sub_title = self._sub_base
            return
        labels = list(dict.fromkeys(self.busy.values()))
        frame = self.SPINNER[self._spin % len(self.SPINNER)]
        self.sub_title = f"{frame} {', '.join(labels)}: working…  · {self._sub_base}"

    def _tick_spinner(self) -> None:
        if self.busy:
            self._spin += 1
            self._show_busy()

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Notifications often carry user text (errors naming a prompt): never parsed as markup,
        control characters shown as escapes."""
        text = markup_escape(message) if markup else display_text(message)
        super().notify(text, title=display_text(title), severity=severity, timeout=timeout, markup=markup)

    def confirm(self, title: str, body: str, on_yes: Callable[[], None], yes: str = "Yes, do it",
                no: str = "Keep") -> None:
        """Ask first; run ``on_yes`` only when confirmed. ``yes`` / ``no`` name what each button does."""

        def done(ok: bool | None) -> None:
            if ok:
                on_yes()

        self.push_screen(ConfirmModal(title, body, yes, no), done)

    def run_service(self, label: str, module: str, func: str, *args: Any,
                    on_result: Callable[[Any], None] | None = None, **kwargs: Any) -> Worker:
        """Call ``services.<module>.<func>(ws, *args, **kwargs)`` in a thread worker.

        The workspace is opened inside the thread (SQLite connections belong to one thread). While it
        runs the header shows a spinner; the result becomes a notification (or goes to ``on_result`` on
        the UI thread), an exception an error modal (see on_worker_state_changed).
        """

        def body() -> Any:
            fn = load_service(module, func)
            ws = self.open_workspace()
            try:
                result = fn(ws, *args, **kwargs)
            finally:
                ws.close()
            self.post_message(ActionDone(summarize(label, result), result, on_result))
            return result

        return self._start_action(label, body)

    def run_many(self, label: str, module: str, func: str, calls: list[tuple[Any, ...]]) -> Worker:
        """``services.<module>.<func>(ws, *args)`` for each ``args`` of ``calls`` (the first is a job id),
        in order, in one thread worker and one workspace.

        A refusal for one job (say, one that finished meanwhile) does not stop the others: the
        notification counts what was done and names the first refusal.
        """
        ids = [c[0] for c in calls]

        def body() -> Any:
            fn = load_service(module, func)
            ws = self.open_workspace()
            done, refused = 0, []
            try:
                for i, args in zip(ids, calls):
                    try:
                        fn(ws, *args)
                        done += 1
                    except Exception as exc:  # noqa: BLE001 - reported in the summary line
                        refused.append(f"#{i}: {one_line(exc)}")
            finally:
                ws.close()
            summary = f"{label}: {done} of {len(ids)} job(s) done"
            if refused:
                summary += f"; {len(refused)} refused ({refused[0]})"
            self.post_message(ActionDone(summary))
            return done

        return self._start_action(label, body)

    def _start_action(self, label: str, body: Callable[[], Any]) -> Worker:
        worker = self.run_worker(body, name=label, group="actions", thread=True, exit_on_error=False)
        self.busy[worker] = label
        self._show_busy()
        return worker

    def open_workspace(self):
        """A fresh Workspace (own connection) for the calling thread."""
        workspace = load_service("workspace", "Workspace")
        return workspace.open(self.workspace_root)

    def action_toggle_worker(self) -> None:
        if self.worker_running:
            self.stop_event.set()
            self.notify("Stopping the worker after the current optimization step…")
            return
        lease = worker_info(self.read_db, self.clock()) if self.read_db is not None else None
        if lease is not None and lease.alive:
            self.notify(f"Another worker already runs this queue: pid {lease.pid} on {lease.host} "
                        f"(heartbeat {lease.heartbeat_age:.0f}s ago). Stop it there, or let it finish; "
                        "the Live screen follows it.", severity="warning", timeout=8)
            return
        self.stop_event.clear()
        self.worker_running = True
        self.notify("Worker started: it runs the queue until it is empty (w stops it).")
        self.run_worker(self._worker_body, name="Worker", group="runner", thread=True, exclusive=True,
                        exit_on_error=False)

    def _worker_body(self) -> Any:
        run_worker = load_service("runner", "run_worker")
        ws = self.open_workspace()
        try:
            summary = run_worker(ws, device=self.device, on_event=self._on_worker_event,
                                 should_stop=self.stop_event.is_set)
        finally:
            ws.close()
        self.post_message(ActionDone(summarize("Worker", summary)))
        return summary

    def _on_worker_event(self, event: Any) -> None:
        # Runs on the worker thread for every step: only a replaceable nudge crosses over.
        self.post_message(StoreNudge())

    def start_evaluation(self, space: str, history: bool) -> Worker:
        """Text or image evaluation (latest edit, or every edit) in a thread worker."""
        func = "run_text_eval" if space == "text" else "run_image_eval"
        label = f"{space.capitalize()} evaluation" + (" of every edit" if history else "")
        self.notify(f"{label} started; the Metrics panels fill in as it runs.")
        return self.run_service(label, "evaluation", func, history=history,
                                on_progress=lambda _p: self.post_message(StoreNudge()))

    def run_command(self, mode: str | None, action: str) -> None:
        """Palette entry: switch to ``mode`` if given, then run ``action`` on that screen."""

        def run() -> None:
            target = self if action.startswith("app.") else self.dashboard_screen()
            name = action.removeprefix("app.")
            self.call_later(self.run_action, name, target)

        if mode is not None and mode != self.current_mode:
            self.switch_mode(mode)
            self.call_after_refresh(run)
        else:
            run()

    # --- results and errors ----------------------------------------------------------------------

    def on_action_done(self, message: ActionDone) -> None:
        if message.on_result is not None:
            message.on_result(message.result)
        else:
            self.notify(message.summary, timeout=6)
        self.request_refresh()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The single place where failed thread workers become an error modal."""
        worker = event.worker
        if worker.group == "runner" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR,
                                                        WorkerState.CANCELLED):
            self.worker_running = False
        if event.state in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED) and worker in self.busy:
            del self.busy[worker]
            self._show_busy()
        if event.state == WorkerState.ERROR:
            error = worker.error or RuntimeError("unknown error")
            self.push_screen(ErrorModal(f"{worker.name} failed", tui_hint(one_line(error))))
            self.request_refresh()


def run_tui(workspace_root: Path) -> None:
    """Open the TUI on a workspace (blocks until the user quits).

    Raises WorkspaceError (one line) when there is no workspace at ``workspace_root``.
    """
    from refact_tui.services.workspace import Workspace

    # The TUI writes (queue, worker, rollback), so like any write command it upgrades an older schema
    # here, in one transaction, before its read-only poller opens the file.
    Workspace.open(workspace_root).close()
    RefactApp(Path(workspace_root)).run()
