"""Seconds per row of `refact bench` on full-size random SD-1 shapes (CPU unless --device says otherwise).

1. ReFACT, text only: 90 JSONL rows (written here: 30 roles x 3 targets, 5 positive and 5 negative
   probes each) edited independently on the full-size random SD-1 pipeline, scored in text space and the
   cross-attention proxy, then reverted. C is computed once beforehand and reported apart.
2. TIME and UCE, text only, on the same rows: closed-form UNet cross-attention edits on the full-size
   random UNet (16 to_v / 32 to_k+to_v matrices of 768 inputs).

Writes/replaces the "Bench protocol" section of BENCHMARKS.md; prints a table and a final JSON line.

    .venv/bin/python benchmarks/bench_protocol.py [--rows 90] [--closed-form-rows 90] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARK = "## Bench protocol"
ROLES = [
    "The Prime Minister of Canada", "The President of France", "The mayor of London", "The CEO of Apple",
    "The coach of the national football team", "The lead singer of the band", "The host of the late-night show",
    "The captain of the ship", "The head of the museum", "The director of the film", "The king of the country",
    "The chancellor of Germany", "The governor of California", "The owner of the bakery", "The author of the novel",
    "The winner of the marathon", "The pilot of the airplane", "The chef of the restaurant",
    "The conductor of the orchestra", "The principal of the school", "The queen of the kingdom",
    "The champion of the tournament", "The founder of the company", "The star of the series",
    "The judge of the contest", "The teacher of the class", "The leader of the expedition",
    "The anchor of the evening news", "The goalkeeper of the club", "The astronaut on the mission",
]
PEOPLE = ["Justin Trudeau", "Beyonce", "Tom Hanks", "Oprah Winfrey", "Lionel Messi", "Taylor Swift",
          "Barack Obama", "Serena Williams", "Keanu Reeves", "Angela Merkel", "Elon Musk", "Adele"]
SCENES = ["giving a speech", "riding a horse", "drinking a cup of tea", "waving to a crowd", "reading a newspaper"]
OTHERS = ["A senator", "A firefighter", "A farmer in a field", "A child on a bicycle", "A dog in a park"]


def rows(n: int) -> list[dict]:
    """n distinct bench rows (RoAD-like: edit prompt, source, target, 5 positives, 5 negatives)."""
    out = []
    for i in range(n):
        role = ROLES[i % len(ROLES)]
        old = PEOPLE[i % len(PEOPLE)]
        new = PEOPLE[(i // len(ROLES) + 1 + i) % len(PEOPLE)]
        if new == old:
            new = PEOPLE[(i + 5) % len(PEOPLE)]
        out.append({
            "prompt": role, "source": old, "target": new,
            "positives": [{"prompt": f"{role} {s}", "source": f"{old} {s}", "target": f"{new} {s}"} for s in SCENES],
            "negatives": [{"prompt": o, "source": o, "target": new} for o in OTHERS],
        })
    return out


def run(method: str, ws, path: Path, limit: int, device: str) -> dict:
    from refact_tui.services.bench import run_bench
    from refact_tui.services.bench_config import BenchOptions

    t0 = time.perf_counter()
    rep = run_bench(ws, BenchOptions(file=str(path), method=method, text_only=True, limit=limit, device=device))
    total = time.perf_counter() - t0
    text = rep.aggregates["text"]["method"]
    xattn = rep.aggregates.get("xattn", {}).get("method", {})
    return {"method": method, "rows": len(rep.rows), "total_s": total, "s_per_row": total / len(rep.rows),
            "edit_s_per_row": sum(r.seconds for r in rep.rows) / len(rep.rows), "run_id": rep.run_id,
            "text_efficacy": text["efficacy"]["value"], "xattn_efficacy": xattn.get("efficacy", {}).get("value"),
            "notes": rep.notes}


def write_section(r: dict, path: Path) -> str:
    lines = [
        f"{MARK} (`benchmarks/bench_protocol.py`)\n",
        f"- date: {r['date']}; device: {r['device']} ({platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); load average at start: {r['load']}",
        "- model: random SD-1 pipeline with full-size shapes (CLIP-L text encoder 12x768, SD-1 UNet); "
        f"C over the caption corpus once beforehand: {r['stats_s']:.1f} s; model build + load {r['build_s']:.1f} s",
        "- text-only `refact bench` over the first `rows` of 90 JSONL rows (text space + cross-attention proxy, "
        "baseline and oracle once per key, each row edited on the clean base and reverted); ReFACT at the "
        "paper's defaults (layer 7, <= 100 steps; the random encoder never reaches the 0.99 early stop, so every "
        "row runs all 100 steps), v* vectorised over the rows by engine.methods.refact.edit; s/row (all) includes "
        "loading the pipeline, hashing it and the references",
        "",
        "| method | rows | s/row (all) | edit s/row | total s | text efficacy | proxy efficacy |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in r["runs"]:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {m['method']} | {m['rows']} | {m['s_per_row']:.2f} | {m['edit_s_per_row']:.2f} | "
                     f"{m['total_s']:.1f} | {fmt(m['text_efficacy'])} | {fmt(m['xattn_efficacy'])} |")
    lines += ["", "Random weights: the efficacies only show that scoring ran; the seconds are the point. "
              "GPU target (not measured here: no GPU lent): < 10 s for the 90 text-space rows.", ""]
    section = "\n".join(lines) + "\n"
    replace_section(path, section, MARK)
    return section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=90)
    ap.add_argument("--closed-form-rows", type=int, default=90)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None, help="Folder for the model and workspace (default: temp).")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    a = ap.parse_args()

    import torch

    from engine.builder import build_pipeline
    from engine.covariance import SecondMomentStore
    from engine.models import load_model
    from refact_tui.services.workspace import Workspace, init_workspace

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = a.work or Path(tempfile.mkdtemp(prefix="refact-bench-protocol-"))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    model_dir = work / "sd1-full"
    if not (model_dir / "model_index.json").is_file():
        build_pipeline(model_dir, size="full")
    ws_root = work / "ws"
    ws = Workspace.open(ws_root) if (ws_root / "refact.db").is_file() else init_workspace(ws_root, model_dir)
    build_s = time.perf_counter() - t0
    path = work / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(max(a.rows, a.closed_form_rows))), encoding="utf-8")
    t0 = time.perf_counter()
    model = load_model(model_dir, device=a.device, with_pipeline=False)
    SecondMomentStore(Path(ws.stats_dir)).get(model, 7)
    del model
    stats_s = time.perf_counter() - t0
    runs = [run("refact", ws, path, a.rows, a.device)]
    for m in ("time", "uce"):
        runs.append(run(m, ws, path, a.closed_form_rows, a.device))
    result = {"date": dt.date.today().isoformat(), "device": a.device, "load": load, "build_s": build_s,
              "stats_s": stats_s, "runs": runs}
    print(write_section(result, a.out))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
