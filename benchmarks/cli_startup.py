"""CLI start-up: the wall time of each `refact` command against `refact --help`, in one run.

Every command runs as its own process (as a user types it), ``--repeats`` times; the table shows the
median and its ratio to `refact --help`'s median. Targets (issue 19): the commands that need no model
within 2x of --help; `queue add` / `queue import` likewise (they need only the tokenizer); `init`
within 3 s plus the model's own load, which is timed apart in a process that has already imported
everything. Prints a table, writes the BENCHMARKS.md section and ends with one JSON line.

    python benchmarks/cli_startup.py [--model PATH|minilm] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
REFACT = [sys.executable, "-m", "refact_tui"]
SECTION_START = "<!-- bench:cli_startup -->"
SECTION_END = "<!-- /bench:cli_startup -->"
LIGHT = ("queue ls", "history", "histories", "show 1", "checkout main", "bench ls", "doctor")
TOKENIZER_ONLY = ("queue add", "queue import")
LOAD_SNIPPET = (
    "import sys, time\n"
    "import transformers\n"
    "from engine.models import load_model\n"
    "transformers.AutoTokenizer, transformers.CLIPTextModel, transformers.BertModel  # import the lazy modules\n"
    "t = time.perf_counter(); load_model(sys.argv[1], device='cpu', with_pipeline=False)\n"
    "print(time.perf_counter() - t)\n"
)


def timed(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(args[3:])}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def round_robin(commands: dict[str, object], env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median seconds per command; each round runs every command once, so a change in the machine's
    load during the run hits all of them alike. A command is an argv, or a function of the round."""
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeats):
        for name, args in commands.items():
            seconds[name].append(timed(args(i) if callable(args) else args, env))
    return {name: statistics.median(values) for name, values in seconds.items()}


def run(model: str, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    tmp = Path(tempfile.mkdtemp(prefix="refact-startup-"))
    try:
        if model == "tiny":
            model = str(tmp / "tiny-sd")
            timed([*REFACT, "model", "build", model], env)
        ws = [*REFACT, "--workspace", str(tmp / "ws")]
        init_s = timed([*ws, "init", "--model", model], env)
        load = float(subprocess.run([sys.executable, "-c", LOAD_SNIPPET, model], cwd=ROOT, env=env,
                                    capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        timed([*ws, "queue", "add", "-p", "A cat", "-s", "a cat", "-t", "a dog", "--max-steps", "2"], env)
        timed([*ws, "run", "--device", "cpu"], env)  # one edit, so `show 1` has something to show
        requests = tmp / "requests.jsonl"
        requests.write_text("".join(json.dumps({"prompt": f"A house {i}", "source": "a house",
                                                "target": "a boat"}) + "\n" for i in range(3)))
        commands: dict[str, object] = {"--help": [*REFACT, "--help"]}
        commands.update({c: [*ws, *c.split()] for c in LIGHT})
        commands["queue add"] = lambda i: [*ws, "queue", "add", "-p", f"A bird {i}", "-s", "a bird", "-t", "a fish"]
        commands["queue import"] = [*ws, "queue", "import", str(requests), "--allow-duplicate"]
        rows = round_robin(commands, env, repeats)
        rows = {"--help": rows.pop("--help"), "init": init_s, **rows}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows["--help"]
    return {"model": model if not model.startswith(str(tmp)) else "tiny", "repeats": repeats, "help_s": base,
            "model_load_s": load, "init_minus_load_s": rows["init"] - load,
            "commands": {k: {"seconds": v, "ratio": v / base} for k, v in rows.items()}}


def target(command: str, result: dict) -> str:
    if command == "--help":
        return "reference"
    if command == "init":
        return "met" if result["init_minus_load_s"] <= 3.0 else "missed"
    ratio = result["commands"][command]["ratio"]
    return "met" if ratio <= 2.0 else "missed"


def table(result: dict) -> list[str]:
    lines = ["| command | median s | x --help | target |", "|---|---|---|---|"]
    for name, row in result["commands"].items():
        goal = {"--help": "", "init": f"<= 3 s + load ({result['model_load_s']:.1f} s)"}.get(name, "<= 2x")
        lines.append(f"| `refact {name}` | {row['seconds']:.2f} | {row['ratio']:.1f} | {goal} {target(name, result)} |")
    return lines


def write_section(path: Path, result: dict) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [SECTION_START, "## CLI start-up (`benchmarks/cli_startup.py`)", "",
             f"- date: {date.today()}; {platform.machine()}, {os.cpu_count()} cores, 1-minute load {load:.1f} "
             f"after the run; model {result['model']}; median of {result['repeats']} runs per command, each a new "
             f"process (`python -m refact_tui ...`); `init` once; the model's own load "
             f"({result['model_load_s']:.2f} s) timed in a process with everything imported.",
             "- Commands that need no model import no torch (rule: `refact_tui/cli/__init__.py`; checked by "
             "tests/test_cli_startup.py). `queue add` / `queue import` count tokens with the `tokenizers` package "
             "alone (engine/token_counts.py), once `refact init` has checked it gives transformers' ids; `init` "
             "no longer imports diffusers nor the image-evaluation stack.",
             "", *table(result), "", SECTION_END]
    replace_section(path, "\n".join(lines), SECTION_START, SECTION_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (built here), minilm, or a model folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    result = run(args.model, args.repeats)
    print("\n".join(table(result)))
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
