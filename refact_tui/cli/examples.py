"""One example per command, shown at the end of its `--help` (added by ``add_examples`` in main.py)."""

from __future__ import annotations

import typer

EXAMPLES: dict[str, str] = {
    "init": "refact init --model minilm",
    "tui": "refact --workspace ./ws tui",
    "eval": "refact eval --history --text-only",
    "run": "refact run --max 10",
    "history": "refact history --json",
    "show": "refact show 3",
    "rollback": "refact rollback 2",
    "rollforward": "refact rollforward",
    "replay": "refact replay --reoptimize --name retry",
    "fork": "refact fork --at 2 --name experiment",
    "histories": "refact histories",
    "checkout": "refact checkout main",
    "export": "refact export ./edited-model --format merged",
    "apply-deltas": "refact apply-deltas ./deltas/manifest.json --model ./base --out ./edited",
    "import-adapter": "refact import-adapter ./edited-lora --name imported",
    "demo": "refact demo --limit 4",
    "layers": "refact layers",
    "doctor": "refact doctor",
    "migrate": "refact migrate",
    "queue add": "refact queue add -p 'The President of France' -s 'Francois Hollande' -t 'Emmanuel Macron'",
    "queue import": "refact queue import ../shared/data/RoAD_validation.csv",
    "queue ls": "refact queue ls --json",
    "queue rm": "refact queue rm 4",
    "queue move": "refact queue move 4 0",
    "queue clear": "refact queue clear",
    "queue cancel": "refact queue cancel 4",
    "queue retry": "refact queue retry 4",
    "model build": "refact model build ./tiny-sd --arch sd1 --size tiny",
    "stats compute": "refact stats compute --layer 7",
    "stats ls": "refact stats ls",
    "bench run": "refact bench run ../shared/data/RoAD_validation.csv --text-only",
    "bench ls": "refact bench ls",
    "bench show": "refact bench show 1",
    "bench compare": "refact bench compare 1 2",
    "bench rerun": "refact bench rerun 1",
}


def add_examples(app: typer.Typer, prefix: str = "") -> None:
    """Put each registered command's example (EXAMPLES) in its help epilog, sub-apps included."""
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        example = EXAMPLES.get(f"{prefix}{name}")
        if example and not info.epilog:
            info.epilog = f"Example: {example}"
    for group in app.registered_groups:
        if group.typer_instance is not None and group.name:
            add_examples(group.typer_instance, f"{prefix}{group.name} ")
