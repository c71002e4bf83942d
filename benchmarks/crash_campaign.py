"""Crash campaign: SIGKILL the worker at random moments and check that no edit is lost or doubled.

Builds a tiny random SD pipeline and workspace, queues N distinct edits (some slow), then starts
`refact run` again and again and SIGKILLs it while it loads, mid-optimisation or mid-commit (and, with
--batch N when `refact run --batch` exists, while it edits a batch). One round pauses a worker with
SIGSTOP past the lease's stale time, lets a second worker take over and resumes the first (SIGCONT): it
must stop without committing. A reader process polls `history --json` and `queue ls --json` all along.

Checks at the end: every job done with exactly one applied edit (none lost, none doubled), seqs 1..N,
`integrity_check` ok, weights rebuilt from base + deltas (outside the workspace code) equal the recorded
hash, rollback to the middle and rollforward back bit-exact, and no lock error seen by the reader.
Prints a table and a final JSON line, and rewrites its section of BENCHMARKS.md.

    .venv/bin/python benchmarks/crash_campaign.py --edits 100 --kills 20 [--batch 4]
    .venv/bin/python benchmarks/crash_campaign.py --edits 24 --kills 6 --batch 4 --insert spread --layers 1,2 \
        --max 6 --mixed

``--insert`` / ``--layers`` pick the batch insertion, ``--max N`` stops every worker after N jobs (a batch's
jobs counted one by one; the campaign restarts it), ``--mixed`` queues every fifth job as a TIME edit
(UNet cross-attention) among the ReFACT ones. Also counted: worker tracebacks, applied edits that changed
no weight (their hash equals the one before), and failed jobs (none may fail here: no job is bad).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTION_START = "<!-- crash-campaign:start -->"
SECTION_END = "<!-- crash-campaign:end -->"
STALE_S = 1.5
ADJ = ["red", "old", "tall", "quiet", "famous", "young", "brave", "small", "happy", "green"]
NOUN = ["king", "doctor", "painter", "river", "castle", "singer", "teacher", "mountain", "garden", "captain"]
OTHER = ["queen", "nurse", "poet", "lake", "tower", "dancer", "student", "valley", "forest", "pilot"]

READER = r"""
import json, sys, time
from pathlib import Path
from typer.testing import CliRunner
from refact_tui.cli.main import app
root, stop = sys.argv[1], Path(sys.argv[2])
runner = CliRunner()
polls = errors = 0
samples = []
while not stop.exists():
    for cmd in (["history", "--json"], ["queue", "ls", "--json"]):
        r = runner.invoke(app, ["--workspace", root, *cmd])
        polls += 1
        text = (r.stdout or "") + (r.stderr or "")
        if r.exit_code != 0 or "locked" in text.lower():
            errors += 1
            samples.append(text.strip()[-300:])
        else:
            json.loads(r.stdout)
    time.sleep(0.25)
print(json.dumps({"polls": polls, "errors": errors, "samples": samples[:3]}))
"""


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", REFACT_LEASE_STALE_AFTER=str(STALE_S))


def q(db_path: Path, sql: str, params=()) -> list:
    con = sqlite3.connect(str(db_path), timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


class Campaign:
    def __init__(self, root: Path, batch: int | None, rng: random.Random, run_args: tuple[str, ...] = ()) -> None:
        self.root, self.db, self.batch, self.rng = root, root / "refact.db", batch, rng
        self.run_args = run_args  # --insert / --layers / --max, passed to every worker
        self.tracebacks: list[str] = []
        self.kills: dict[str, int] = {"loading": 0, "optimizing": 0, "committing": 0, "batch": 0}
        self.worker_seconds = 0.0
        self.starts = 0
        self.exits: list[str] = []  # workers that ended by themselves with an error

    def start(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "refact_tui", "--workspace", str(self.root), "run", "--device", "cpu", "--json"]
        if self.batch:
            cmd += ["--batch", str(self.batch)]
        cmd += list(self.run_args)
        self.starts += 1
        p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.started = time.monotonic()  # type: ignore[attr-defined]
        return p

    def finish(self, p: subprocess.Popen, timeout: float | None = None) -> tuple[int, str, str]:
        out, err = p.communicate(timeout=timeout)
        self.worker_seconds += time.monotonic() - p.started  # type: ignore[attr-defined]
        if "Traceback (most recent call last)" in err:
            self.tracebacks.append(err.strip()[-300:])
        if p.returncode not in (0, -signal.SIGKILL):
            self.exits.append(f"exit {p.returncode}: {err.strip()[-200:]}")
        return p.returncode, out, err

    def kill(self, p: subprocess.Popen, moment: str) -> None:
        p.send_signal(signal.SIGKILL)
        self.finish(p)
        self.kills[moment] += 1

    def done(self) -> int:
        return q(self.db, "SELECT COUNT(*) FROM jobs WHERE state = 'done'")[0][0]

    def remaining(self) -> int:
        return q(self.db, "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")[0][0]

    def wait_for(self, p, cond, timeout: float = 120.0, poll: float = 0.01) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                return False
            try:
                if cond():
                    return True
            except sqlite3.OperationalError:
                pass
            time.sleep(poll)
        return False

    def running(self, p: subprocess.Popen, phase: str, min_steps: int = 0) -> bool:
        """Whether worker ``p`` itself (not a killed one whose job still reads 'running') is at ``phase``."""
        return bool(q(self.db, "SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.phase = ? AND "
                               "j.worker_id LIKE ? AND "
                               "(SELECT COUNT(*) FROM steps s WHERE s.job_id = j.id AND s.attempt = j.attempts) >= ?",
                      [phase, f"%:{p.pid}:%", min_steps]))

    def one_kill(self, moment: str) -> bool:
        """Start a worker and SIGKILL it at ``moment``; False if it finished the queue first."""
        p = self.start()
        if moment == "loading":
            time.sleep(self.rng.uniform(0.5, 10.0))  # imports, model load, C, or the first claim
            if p.poll() is not None:
                self.finish(p)
                return False
            self.kill(p, moment)
            return True
        # let this worker finish a few jobs first, so the kills spread over the queue (a kill right after
        # start-up would always hit the job at the front and charge it every time)
        done0, skip = self.done(), self.rng.randint(0, 5)

        def after_skip(cond):
            return lambda: self.done() >= done0 + skip and cond()

        if moment == "committing":
            ok = self.wait_for(p, after_skip(lambda: self.running(p, "committing")), poll=0.002)
        elif moment == "batch":
            ok = self.wait_for(p, after_skip(lambda: q(self.db, "SELECT COUNT(*) FROM jobs WHERE state = 'running' "
                                                             "AND worker_id LIKE ?", [f"%:{p.pid}:%"])[0][0] > 1))
        else:
            steps = self.rng.randint(1, 12)
            ok = self.wait_for(p, after_skip(lambda: self.running(p, "optimizing", steps)))
        if not ok:
            if p.poll() is None:  # the moment did not come (e.g. the phase was too short to see): kill anyway
                self.kill(p, "optimizing")
                return True
            self.finish(p)
            return False
        self.kill(p, moment)
        return True

    def lease_case(self) -> dict:
        """SIGSTOP worker A past the stale time, B takes over, SIGCONT A: A must stop and commit nothing."""
        a = self.start()
        if not self.wait_for(a, lambda: self.running(a, "optimizing", 2)):
            self.finish(a)
            return {"ran": False}
        gen_a = q(self.db, "SELECT generation FROM leases")[0][0]
        a.send_signal(signal.SIGSTOP)
        time.sleep(STALE_S + 1.0)
        b = self.start()
        took_over = self.wait_for(b, lambda: q(self.db, "SELECT generation FROM leases") and
                                  q(self.db, "SELECT generation FROM leases")[0][0] > gen_a, timeout=120)
        a.send_signal(signal.SIGCONT)
        rc_a, _out, err_a = self.finish(a, timeout=120)
        written_by_a_after = q(self.db, "SELECT COUNT(*) FROM edits WHERE lease_generation = ? AND created_at > "
                                        "(SELECT acquired_at FROM leases)", [gen_a])[0][0] if took_over else -1
        self.kill(b, "optimizing") if b.poll() is None else self.finish(b)
        return {"ran": True, "took_over": bool(took_over), "a_exit": rc_a,
                "a_stopped": rc_a == 1 and "lost the worker lease" in err_a, "a_commits_after": written_by_a_after,
                "a_stderr": err_a.strip()[-300:]}


def build_workspace(root: Path, n: int, rng: random.Random, mixed: bool = False) -> Path:
    from engine.builder import build_pipeline
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.request import EditRequest
    from refact_tui.services.runner import STATS_SAMPLES_KEY
    from refact_tui.services.workspace import init_workspace
    from store.db import set_meta
    from store.jobs import enqueue

    model = build_pipeline(root.parent / "model", "tiny", 0)
    ws = init_workspace(root, model)
    set_meta(ws.db, STATS_SAMPLES_KEY, "40")
    hid = ws.history().id
    from refact_tui.services.methods import with_method

    for i in range(n):
        # neighbours differ in their subject's last word, so a batch can hold them (same-word subjects
        # never share a batch: their keys nearly coincide)
        adj, noun, other = ADJ[(i // 10) % 10], NOUN[i % 10], OTHER[(i * 7 + 3) % 10]
        req = EditRequest(prompt=f"The {adj} {noun}", source=f"a {noun}", target=f"a {other}")
        if mixed and i % 5 == 4:  # a TIME edit of the UNet's cross-attention among the ReFACT ones
            req = with_method(req, "time")
        hp = ReFACTHParams(layer=2, lr=0.05, max_steps=rng.choice([8, 16, 40, 80]), prob_threshold=1.0)
        enqueue(ws.db, hid, req, hp)
    ws.close()
    return model


def verify(root: Path, model_dir: Path, n: int) -> dict:
    from engine.delta import EditDelta
    from engine.models import load_model
    from refact_tui.services.doctor import diagnose
    from refact_tui.services.history import rollback, rollforward
    from refact_tui.services.workspace import Workspace
    from store.edits import list_edits
    from store.integrity import integrity_check
    from store.jobs import list_jobs

    out: dict = {}
    with Workspace.open(root) as ws:
        out["integrity"] = "ok" if not integrity_check(ws.db) else "; ".join(integrity_check(ws.db))
        hid = ws.history().id
        jobs, edits = list_jobs(ws.db), list_edits(ws.db, hid)
        # applied edits per job: its own edit, or the batch edit it is part of (--batch)
        link = "SELECT job_id, id AS edit_id FROM edits WHERE status = 'applied' AND job_id IS NOT NULL"
        if q(root / "refact.db", "SELECT 1 FROM sqlite_master WHERE name = 'batch_requests'"):
            link += (" UNION SELECT b.job_id, b.edit_id FROM batch_requests b JOIN edits e ON e.id = b.edit_id "
                     "WHERE e.status = 'applied'")
        per_job = dict(q(root / "refact.db", f"SELECT job_id, COUNT(DISTINCT edit_id) FROM ({link}) GROUP BY job_id"))
        out["lost"] = sum(1 for j in jobs if j.state != "done" or per_job.get(j.id, 0) == 0)
        out["duplicated"] = sum(c - 1 for c in per_job.values() if c > 1)
        out["failed_jobs"] = [(j.id, (j.error or "")[:120]) for j in jobs if j.state == "failed"][:3]
        m = len(edits)  # == n without --batch
        out["edit_rows"] = m
        out["seqs_ok"] = [e.seq for e in edits] == list(range(1, m + 1)) and ws.history().head_seq == m \
            and all(e.status == "applied" for e in edits)
        out["attempts"] = sum(j.attempts for j in jobs)
        out["charged_crashes"] = sum(j.crashes for j in jobs)
        out["max_crashes"] = max((j.crashes for j in jobs), default=0)
        out["step_rows"] = q(root / "refact.db", "SELECT COUNT(*) FROM steps")[0][0]
        out["failed_count"] = sum(1 for j in jobs if j.state == "failed")
        # an applied edit whose recorded weights equal the ones before it changed nothing
        before = [q(root / "refact.db", "SELECT encoder_hash FROM base_models LIMIT 1")[0][0]] + \
            [e.weights_hash for e in edits[:-1]]
        out["empty_edits"] = sum(1 for e, h in zip(edits, before) if e.weights_hash == h)
        if any(e.module and e.layer < 0 for e in edits):  # TIME edits: the UNet is part of the recorded hash
            from refact_tui.services.working_model import load_history_model

            out["rebuild_ok"] = bool(edits) and load_history_model(ws, device="cpu").weights_hash == \
                edits[-1].weights_hash
        else:
            model = load_model(model_dir, device="cpu", with_pipeline=False)  # rebuild outside the workspace code
            for e in edits:
                EditDelta.load(ws.resolve(e.delta_path), expected_sha256=e.delta_sha256).apply(model)
            out["rebuild_ok"] = bool(edits) and model.encoder_hash() == edits[-1].weights_hash
        mid = max(1, m // 2)
        try:
            back = rollback(ws, mid)
            fwd = rollforward(ws)
            out["rollback_ok"] = back.weights_hash == edits[mid - 1].weights_hash and \
                fwd.weights_hash == edits[-1].weights_hash and fwd.to_seq == m
        except Exception as exc:  # reported, not raised: the other checks still print
            out["rollback_ok"] = f"error: {exc}"
    report = diagnose(root)
    out["orphan_deltas"] = len(report.orphan_deltas)
    out["stray_step_rows"] = report.stray_step_rows
    out["doctor_ok"] = report.ok
    return out


def write_section(result: dict, table: list[tuple[str, str]], path: Path) -> None:
    mode = result["run_args"][result["run_args"].index("--insert") + 1] if "--insert" in result["run_args"] else ""
    tag = (f"-batch{result['batch']}" if result["batch"] else "") + (f"-{mode}" if mode else "") + \
        ("-mixed" if result["mixed"] else "")
    start, end = SECTION_START.replace(":start", f"{tag}:start"), SECTION_END.replace(":end", f"{tag}:end")
    title = f" with --batch {result['batch']}" if result["batch"] else ""
    title += f" {' '.join(result['run_args'])}" if result["run_args"] else ""
    title += ", mixed methods" if result["mixed"] else ""
    lines = [start, f"## Crash campaign{title} (`benchmarks/crash_campaign.py`)", "",
             f"- date: {result['date']}; device: cpu ({platform.machine()}, {os.cpu_count()} cores, shared); "
             f"command: `{result['command']}`", "", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in table]
    lines += ["", "A 'loading' kill lands anywhere from process start to the first claim. An 'optimizing' or "
              "'committing' kill comes after the worker has finished 0-5 jobs, so kills spread over the queue. "
              "Charged crashes are the poison-job count: only deaths while a job optimized or committed count. "
              "Step rows per second is what the worker produced on the shared CPU (tiny model, text metrics "
              "after every edit) while the reader polled. The writer batches rows (20 per transaction or every "
              "0.25 s), so SQLite is not the limit. Orphan delta files are temporaries that `refact doctor` "
              "lists and `--clean` removes.", "", end]
    replace_section(path, "\n".join(lines), start, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="pass --batch N to `refact run` (if it has it)")
    parser.add_argument("--insert", default=None, help="with --batch: rank-one | joint | spread")
    parser.add_argument("--layers", default=None, help="with --insert spread: e.g. 1,2")
    parser.add_argument("--max", type=int, default=None, help="every worker stops after this many jobs")
    parser.add_argument("--mixed", action="store_true", help="every fifth job is a TIME edit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the campaign folder")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    rng = random.Random(args.seed)
    if args.batch:
        help_text = subprocess.run([sys.executable, "-m", "refact_tui", "run", "--help"], cwd=ROOT, env=env(),
                                   capture_output=True, text=True).stdout
        if "--batch" not in help_text:
            print("`refact run` has no --batch here; running without batches", file=sys.stderr)
            args.batch = None
    work = Path(tempfile.mkdtemp(prefix="crash-campaign-"))
    root = work / "ws"
    t0 = time.monotonic()
    model_dir = build_workspace(root, args.edits, rng, mixed=args.mixed)
    run_args = [*(["--insert", args.insert] if args.insert and args.batch else []),
                *(["--layers", args.layers] if args.layers and args.batch else []),
                *(["--max", str(args.max)] if args.max else [])]
    camp = Campaign(root, args.batch, rng, tuple(run_args))
    stop_file = work / "stop-reader"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root), str(stop_file)], cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    moments = ["loading", "optimizing", "committing"] + (["batch"] if args.batch else [])
    lease = {"ran": False}
    total = 0
    misses = 0
    while total < args.kills and camp.remaining() > 0 and misses < 5:
        if total == min(2, args.kills // 2) and not lease["ran"]:
            lease = camp.lease_case()
        moment = moments[total % len(moments)] if rng.random() < 0.8 else rng.choice(moments)
        if camp.one_kill(moment):
            total += 1
        else:
            misses += 1
    if not lease["ran"] and camp.remaining() > 0:
        lease = camp.lease_case()
    rows_before = q(root / "refact.db", "SELECT COUNT(*) FROM steps")[0][0]
    t_final = time.monotonic()
    rc, err = 0, ""
    for _ in range(args.edits + 1):  # with --max every worker stops after N jobs: start the next one
        final = camp.start()
        rc, out, err = camp.finish(final, timeout=3600)
        if rc != 0 or camp.remaining() == 0:
            break
    final_s = time.monotonic() - t_final
    final_rows = q(root / "refact.db", "SELECT COUNT(*) FROM steps")[0][0] - rows_before
    stop_file.touch()
    r_out, r_err = reader.communicate(timeout=120)
    reader_stats = json.loads(r_out.strip().splitlines()[-1]) if r_out.strip() else {"polls": 0, "errors": -1,
                                                                                       "samples": [r_err[-300:]]}
    checks = verify(root, model_dir, args.edits)
    elapsed = time.monotonic() - t0
    rows_per_s = checks["step_rows"] / camp.worker_seconds if camp.worker_seconds else 0.0
    kills = sum(camp.kills.values())
    result = {
        "edits": args.edits, "kills": kills, "lost": checks["lost"], "duplicated": checks["duplicated"],
        "integrity": checks["integrity"], "rebuild_ok": checks["rebuild_ok"],
        "kills_by_moment": camp.kills, "batch": args.batch, "seqs_ok": checks["seqs_ok"],
        "rollback_ok": checks["rollback_ok"], "lease_case": lease, "final_exit": rc,
        "attempts": checks["attempts"], "charged_crashes": checks["charged_crashes"],
        "max_crashes_per_job": checks["max_crashes"],
        "edit_rows": checks["edit_rows"], "failed_jobs": checks["failed_jobs"],
        "orphan_deltas": checks["orphan_deltas"], "stray_step_rows": checks["stray_step_rows"],
        "tracebacks": len(camp.tracebacks), "traceback_samples": camp.tracebacks[:2],
        "empty_edits_applied": checks["empty_edits"], "failed_job_count": checks["failed_count"],
        "run_args": run_args, "mixed": args.mixed,
        "doctor_ok": checks["doctor_ok"], "reader_polls": reader_stats["polls"],
        "reader_lock_errors": reader_stats["errors"], "reader_error_samples": reader_stats["samples"],
        "step_rows": checks["step_rows"], "step_rows_per_s": round(rows_per_s, 1),
        "final_run_step_rows_per_s": round(final_rows / final_s, 1) if final_s else 0.0,
        "worker_starts": camp.starts, "worker_errors": camp.exits[:5], "misses": misses, "worker_seconds": round(camp.worker_seconds, 1),
        "seconds": round(elapsed, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "benchmarks/crash_campaign.py " + " ".join(sys.argv[1:]),
    }
    if rc != 0:
        result["final_stderr"] = err[-500:]
    table = [
        ("edits queued", str(args.edits)),
        ("SIGKILLs (loading / optimizing / committing / batch)",
         f"{kills} ({camp.kills['loading']} / {camp.kills['optimizing']} / {camp.kills['committing']} / "
         f"{camp.kills['batch']})"),
        ("worker starts / worker wall time", f"{camp.starts} / {camp.worker_seconds:.0f} s"),
        ("lost / duplicated edits", f"{checks['lost']} / {checks['duplicated']}"),
        ("worker tracebacks / applied edits that changed no weight / failed jobs",
         f"{len(camp.tracebacks)} / {checks['empty_edits']} / {checks['failed_count']}"),
        ("worker options / mixed methods", f"{' '.join(run_args) or '-'} / {args.mixed}"),
        ("edit rows (one per job, one per batch with --batch); seqs 1..M, head M",
         f"{checks['edit_rows']}; {checks['seqs_ok']}"),
        ("integrity_check", checks["integrity"]),
        ("base + deltas == recorded hash", str(checks["rebuild_ok"])),
        ("rollback to N/2 and rollforward, bit-exact", str(checks["rollback_ok"])),
        ("SIGSTOP/SIGCONT: taken over / paused worker stopped / its commits after takeover",
         f"{lease.get('took_over')} / {lease.get('a_stopped')} / {lease.get('a_commits_after')}"),
        ("attempts / charged crashes / most on one job (fails at 5)",
         f"{checks['attempts']} / {checks['charged_crashes']} / {checks['max_crashes']}"),
        ("orphan delta files (doctor, before --clean)", str(checks["orphan_deltas"])),
        ("reader polls / lock errors", f"{reader_stats['polls']} / {reader_stats['errors']}"),
        ("step rows written / per worker-second (all runs, start-up included)",
         f"{checks['step_rows']} / {rows_per_s:.1f}"),
        ("step rows per second in the last, uninterrupted run (reader polling)",
         f"{result['final_run_step_rows_per_s']:.1f} ({final_rows} rows, {final_s:.0f} s)"),
        ("campaign wall time", f"{elapsed:.0f} s"),
    ]
    width = max(len(k) for k, _ in table)
    for k, v in table:
        print(f"{k:<{width}}  {v}")
    if not args.no_write:
        write_section(result, table, args.output)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"campaign folder kept at {work}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
