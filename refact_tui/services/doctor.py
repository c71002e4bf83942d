"""`refact doctor`: a full health check of a workspace, and clean-up of what crashed workers leave.

Checks: the database file (present, not empty, opens), the full ``integrity_check`` and foreign keys,
the schema version, the invariants every command relies on (see ``store.integrity.check_database``), every
edit's delta file (present, sha256 as recorded), and the lease. Lists, and with ``clean`` removes,
the leftovers of attempts that never committed: delta files no edit refers to, and step rows of jobs
that are no longer running. Cleaning is refused while a live worker holds the lease (its delta may be
about to commit). Without ``clean`` the database is opened read-only: a workspace of an older
schema is reported (a warning: `refact migrate` upgrades it), not migrated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refact_tui.services.workspace import DB_NAME
from store.db import OutdatedSchemaError, StoreError, open_db
from store.integrity import check_database
from store.leases import get_lease, lease_is_stale
from store.reads import delta_file_refs, stray_step_count
from store.steps import remove_stray_steps


@dataclass(frozen=True)
class Finding:
    """One problem: ``error`` (the workspace is unusable or loses data) or ``warning`` (leftovers)."""

    level: str
    what: str
    fix: str = ""


@dataclass
class DoctorReport:
    """What `refact doctor` found (and removed with --clean)."""

    root: Path
    findings: list[Finding] = field(default_factory=list)
    orphan_deltas: list[str] = field(default_factory=list)      # relative to the workspace
    stray_step_rows: int = 0
    cleaned_deltas: list[str] = field(default_factory=list)
    cleaned_step_rows: int = 0

    @property
    def ok(self) -> bool:
        """No errors (warnings about leftovers do not make a workspace unusable)."""
        return not any(f.level == "error" for f in self.findings)


RESTORE = "restore refact.db from a backup"


def diagnose(root: Path | str, clean: bool = False) -> DoctorReport:
    """Check the workspace at ``root``; with ``clean`` remove orphan delta files and stray step rows."""
    root = Path(root).expanduser().absolute()
    report = DoctorReport(root)
    db_path = root / DB_NAME
    if not db_path.is_file():
        report.findings.append(Finding("error", f"no workspace database at {db_path}",
                                       "run `refact init --model PATH` or pass the right --workspace"))
        return report
    if db_path.stat().st_size == 0:
        report.findings.append(Finding("error", f"{db_path} is an empty (0-byte) file", RESTORE))
        return report
    try:
        db = open_db(db_path, read_only=not clean)  # a check alone never writes (or migrates)
    except OutdatedSchemaError as exc:
        report.findings.append(Finding("warning", str(exc).split(";")[0], "run `refact migrate` to upgrade it"))
        return report
    except StoreError as exc:
        report.findings.append(Finding("error", str(exc), RESTORE))
        return report
    try:
        for problem in check_database(db, full=True):
            report.findings.append(Finding("error", problem, RESTORE))
        if report.ok:
            _check_deltas(db, root, report)
            _leftovers(db, root, report, clean)
    except StoreError as exc:
        report.findings.append(Finding("error", str(exc), RESTORE))
    finally:
        db.close()
    return report


def _check_deltas(db, root: Path, report: DoctorReport) -> None:
    from engine.files import file_sha256

    for ref in delta_file_refs(db):
        edit_id, history_id, seq, status, rel, sha = (ref.edit_id, ref.history_id, ref.seq, ref.status,
                                                      ref.delta_path, ref.delta_sha256)
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        if not path.is_file():
            level = "error" if status == "applied" else "warning"
            report.findings.append(Finding(level, f"delta file {rel} of edit {edit_id} (history {history_id}, seq {seq}, "
                                                  f"{status}) is missing", "restore the deltas/ folder from a backup"))
        elif sha and file_sha256(path) != sha:
            report.findings.append(Finding("error", f"delta file {rel} of edit {edit_id} does not match its recorded "
                                                    "sha256", "restore the deltas/ folder from a backup"))


def _leftovers(db, root: Path, report: DoctorReport, clean: bool) -> None:
    referenced = set()
    for ref in delta_file_refs(db):
        p = Path(ref.delta_path)
        referenced.add((p if p.is_absolute() else root / p).resolve())
    deltas_dir = root / "deltas"
    orphans = sorted(p for p in deltas_dir.glob("*") if p.is_file() and p.resolve() not in referenced) \
        if deltas_dir.is_dir() else []
    report.orphan_deltas = [p.relative_to(root).as_posix() for p in orphans]
    report.stray_step_rows = stray_step_count(db)
    lease = get_lease(db, "worker")
    live = lease is not None and not lease_is_stale(lease)
    if lease is not None and not live:
        report.findings.append(Finding("warning", f"the worker lease of pid {lease.pid} on {lease.host} is stale",
                                       "the next `refact run` takes it over and requeues its job"))
    if report.orphan_deltas:
        shown = ", ".join(report.orphan_deltas[:5]) + (" ..." if len(orphans) > 5 else "")
        report.findings.append(Finding("warning", f"{len(orphans)} delta file(s) of attempts that never committed: "
                                                  f"{shown}", "`refact doctor --clean` removes them"))
    if report.stray_step_rows:
        report.findings.append(Finding("warning", f"{report.stray_step_rows} step row(s) of attempts that never "
                                                  "committed", "`refact doctor --clean` removes them"))
    if not clean or not (orphans or report.stray_step_rows):
        return
    if live:
        report.findings.append(Finding("warning", f"not cleaning: a worker (pid {lease.pid} on {lease.host}) is "
                                                  "running", "run `refact doctor --clean` after it stops"))
        return
    report.cleaned_step_rows = remove_stray_steps(db)
    for p in orphans:
        p.unlink(missing_ok=True)
        report.cleaned_deltas.append(p.relative_to(root).as_posix())
    report.findings = [f for f in report.findings if "never committed" not in f.what]
