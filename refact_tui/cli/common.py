"""Shared CLI plumbing: workspace option, one-line error handling, --json output, rich tables."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sqlite3
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import UsageError as TyperUsageError  # typer 0.29 vendors click

from engine.methods.refact.hparams import HPARAM_RANGES, NORMALIZED_FEATURES_TEMPERATURE, SIMILARITIES, ReFACTHParams

# Typer prints a "<bool>" type next to on/off flags, which take no value: show no type for flags.
# (One class-level override, so every command's --help, --json, --yes, ... follows it.)
_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _option_type(self, ctx)

# file=None makes rich resolve sys.stdout / sys.stderr at print time (CliRunner swaps them).
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    """Print one red `error: ...` line on stderr."""
    from refact_tui.services.display import display_text

    first = display_text(" ".join(str(message).split()) or "unknown error")
    err_console.print(Text(f"error: {first}", style="bold red"), soft_wrap=True)


class ErrorHandlingGroup(typer.core.TyperGroup):
    """Root command group that turns known errors into one red line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.UsageError, TyperUsageError) as exc:  # a bad option or argument: one line, no usage box
            where = exc.ctx.command_path if exc.ctx is not None else "refact"
            print_error(f"{exc.format_message().rstrip('.')}; see `{where} --help`")
            raise typer.Exit(2) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130)
        except Exception as exc:  # noqa: BLE001 - filtered just below
            message = describe_error(exc)
            if message is None:
                raise
            print_error(message)
            raise typer.Exit(1) from None


def describe_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can act on, or None for a bug (re-raised)."""
    from refact_tui.services.errors import user_message

    message = user_message(exc)
    if message is not None:
        return message
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}; check the workspace is writable"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "readonly" in text or "unable to open" in text or "disk I/O" in text:
            return f"cannot write to the workspace database ({text}); check the workspace is writable"
        return f"database error: {text}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return None


def workspace_root(ctx: typer.Context) -> Path:
    """The workspace folder chosen by --workspace / REFACT_WORKSPACE / the default."""
    obj = ctx.find_root().obj or {}
    from refact_tui.services.workspace import resolve_root

    return resolve_root(obj.get("workspace"))


def open_workspace(ctx: typer.Context, read_only: bool = False):
    """Open the workspace of this invocation (WorkspaceError if there is none). Commands that only
    read pass ``read_only``: they never write the database, so they never migrate it either."""
    from refact_tui.services.workspace import Workspace

    return Workspace.open(workspace_root(ctx), read_only=read_only)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON value of dataclasses, paths, enums, tuples and tensors (for --json)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def print_json(obj: Any) -> None:
    """Write obj as indented JSON to stdout (no rich markup or wrapping)."""
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def print_listing(items: Sequence[Any], json_out: bool, title: str, columns: Sequence[str],
                  row: Callable[[Any], Sequence[Any]]) -> None:
    """``items`` as JSON, or as a table with ``row(item)`` for each line."""
    if json_out:
        print_json(items)
        return
    print_table(title, columns, [row(item) for item in items])


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Render a simple rich table; None cells show as '-'. Cells are plain text (never markup), with
    control characters shown as escapes, so user text prints as it is stored."""
    from refact_tui.services.display import plain

    table = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:  # a header never wraps mid-word (min_width); long cells fold
        table.add_column(col, overflow="fold", min_width=max((len(w) for w in col.split()), default=1))
    for row in rows:
        table.add_row(*(v if isinstance(v, Text) else plain("-" if v is None else v) for v in row))
    console.print(table)


def fmt_float(value: float | None, digits: int = 4) -> str | None:
    """Compact float for tables."""
    if value is None:
        return None
    return f"{value:.{digits}g}"


def short(text: str | None, width: int = 40) -> str | None:
    """Shorten long prompts for tables."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def parse_layers(values: Any) -> dict[str, Any]:
    """``--layer`` values (N, or SLOT=N per encoder slot, repeatable) -> {"layer": N, "slot_layers": {...}}."""
    from engine.methods.refact.hparams import HParamsError

    if values is None or isinstance(values, int):
        return {} if values is None else {"layer": values}
    out: dict[str, Any] = {}
    slot_layers: dict[str, int] = {}
    for raw in values:
        slot, sep, number = str(raw).strip().rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise HParamsError(f"--layer {raw!r} is not N or SLOT=N (e.g. --layer text_encoder_2=26)") from None
        if not sep:
            out["layer"] = n
        elif not slot.strip():
            raise HParamsError(f"--layer {raw!r} names no slot; use SLOT=N, e.g. text_encoder=8")
        elif slot.strip() in slot_layers:
            raise HParamsError(f"--layer gives {slot.strip()} twice; pass one --layer SLOT=N per slot")
        else:
            slot_layers[slot.strip()] = n
    if slot_layers:
        out["slot_layers"] = slot_layers
    return out


def parse_slots(value: str | None) -> dict[str, Any]:
    """``--slots a,b`` -> {"slots": ("a", "b")} (empty when not given); HParamsError when it names none."""
    from engine.methods.refact.hparams import HParamsError

    if value is None:
        return {}
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise HParamsError(f"--slots {value!r} names no encoder slot; give e.g. --slots text_encoder "
                           "(`refact layers` lists them), or leave it out to edit every slot")
    return {"slots": names}


def hparam_overrides(
    layer: Any = None,
    lr: float | None = None,
    max_steps: int | None = None,
    prob_threshold: float | None = None,
    weight_decay: float | None = None,
    clamp_factor: float | None = None,
    similarity: str | None = None,
    temperature: float | None = None,
    ridge: float | None = None,
    preserve: float | None = None,
    slots: str | None = None,
    moment_rank: int | None = None,
) -> dict[str, Any]:
    """The hparam options the user actually gave (None = not given); ``layer`` may be N or a list
    of N / SLOT=N values, ``slots`` a comma-separated list of encoder slots."""
    given = dict(
        lr=lr, max_steps=max_steps, prob_threshold=prob_threshold,
        weight_decay=weight_decay, clamp_factor=clamp_factor, similarity=similarity,
        temperature=temperature, ridge=ridge, preserve=preserve, moment_rank=moment_rank,
    )
    out = {k: v for k, v in given.items() if v is not None}
    return {**parse_layers(layer), **out, **parse_slots(slots)}


# Reusable option declarations for the hyperparameters (queue add / import / replay).
HP = "Hyperparameters"
_PAPER = ReFACTHParams()
_RANGES = {r.name: r for r in HPARAM_RANGES}


def _hp(name: str, text: str, default: str | None = None) -> str:
    """Help text with the hyperparameter's default and allowed range."""
    shown = default if default is not None else f"{getattr(_PAPER, name):g}"
    spec = _RANGES.get(name)
    allowed = spec.describe().replace("a finite number in ", "").replace("an integer in ", "") if spec else None
    return f"{text} Default {shown}" + (f"; range {allowed}." if allowed else ".")
LayerOpt = typer.Option(None, "--layer", help="Encoder layer whose fc2 is edited: N (the first encoder slot) "
                        "or SLOT=N per slot, repeatable (e.g. --layer text_encoder=8 --layer text_encoder_2=26). "
                        "Default: the workspace's (7 on SD1); range 0..layers-1.",
                        rich_help_panel=HP)
SlotsOpt = typer.Option(None, "--slots", help="Encoder slots to edit, comma-separated (default: every text "
                        "encoder of the pipeline; see `refact layers`).", rich_help_panel=HP)
LrOpt = typer.Option(None, "--lr", help=_hp("lr", "Adam learning rate for v*."), rich_help_panel=HP)
StepsOpt = typer.Option(None, "--max-steps", help=_hp("max_steps", "Most optimization evaluations."),
                        rich_help_panel=HP)
ThresholdOpt = typer.Option(None, "--prob-threshold", help=_hp("prob_threshold", "Early stop at this mean P(target)."),
                            rich_help_panel=HP)
WdOpt = typer.Option(None, "--weight-decay", help=_hp("weight_decay", "Weight decay on ||delta||."), rich_help_panel=HP)
ClampOpt = typer.Option(None, "--clamp-factor", help=_hp("clamp_factor", "Clamp ||delta|| to this times ||v0||."),
                        rich_help_panel=HP)
SimOpt = typer.Option(None, "--similarity", help=f"{' or '.join(SIMILARITIES)}. Default {_PAPER.similarity}.",
                      rich_help_panel=HP)
TempOpt = typer.Option(None, "--temperature", help=_hp(
    "temperature", "Softmax temperature.",
    f"{_PAPER.temperature:g}, {NORMALIZED_FEATURES_TEMPERATURE:g} on encoders with normalised features, "
    "as recorded by `refact init`"), rich_help_panel=HP)
RidgeOpt = typer.Option(None, "--ridge", help=_hp("ridge", "Ridge added to C before the solve."), rich_help_panel=HP)
PreserveOpt = typer.Option(None, "--preserve", help=_hp("preserve", "Weight of earlier edits' keys in C (0 = paper's "
                           "ReFACT; e.g. 1 protects earlier edits of the same layer)."), rich_help_panel=HP)
MomentRankOpt = typer.Option(None, "--moment-rank", help=_hp("moment_rank", "Solve u against C's top-K eigenpairs "
                             "plus its diagonal (O(width x K) memory at LLM widths; 0 = the dense C)."),
                             rich_help_panel=HP)

# name -> (type, option) of every hyperparameter option, in help order.
HPARAM_OPTIONS: dict[str, tuple[type, Any]] = {
    "layer": (list[str], LayerOpt), "lr": (float, LrOpt), "max_steps": (int, StepsOpt),
    "prob_threshold": (float, ThresholdOpt), "weight_decay": (float, WdOpt), "clamp_factor": (float, ClampOpt),
    "similarity": (str, SimOpt), "temperature": (float, TempOpt), "ridge": (float, RidgeOpt),
    "preserve": (float, PreserveOpt), "moment_rank": (int, MomentRankOpt), "slots": (str, SlotsOpt),
}


def with_hparam_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the hyperparameter options (after its own); it receives the ones the user gave
    as its ``hparams`` argument, a dict from ``hparam_overrides``."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "hparams"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in HPARAM_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name, None) for name in HPARAM_OPTIONS}
        return command(*args, hparams=hparam_overrides(**given), **kwargs)

    # Typer reads the options from the signature and the type hints, so both must list them.
    wrapper.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
    hints = {k: v for k, v in command.__annotations__.items() if k != "hparams"}
    wrapper.__annotations__ = {**hints, **{name: kind for name, (kind, _) in HPARAM_OPTIONS.items()}}
    return wrapper
