"""Named leases (one worker per workspace): who holds it, and recovery when the holder died.

A lease is stale when its heartbeat is older than ``stale_after`` seconds, or when its holder runs
on this host and its pid no longer exists. A stale lease can be taken over.

Fencing: every acquisition by a new holder gets the next ``generation`` (a counter kept in ``meta``, so
it never goes back even after a release). A holder checks its :class:`Fence` (holder + generation) inside
each write transaction (:func:`check_lease`); a holder that was paused past the stale time and taken
over finds its fence broken and must stop without writing.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import sqlite_utils

from store.db import StoreError, fetch_one, get_meta, now, set_meta, transaction
from store.records import LeaseRow

DEFAULT_STALE_AFTER = 30.0


class LeaseHeldError(StoreError):
    """Another live process holds the lease."""


class LeaseLostError(StoreError):
    """This holder's lease was taken over (it was stale): it must stop and write nothing more."""


@dataclass(frozen=True)
class Fence:
    """Who holds a lease and which generation of it: checked inside every fenced write."""

    name: str
    holder: str
    generation: int


def _generation_key(name: str) -> str:
    return f"lease_generation.{name}"


def this_host() -> str:
    """The host name written into leases."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def get_lease(db: sqlite_utils.Database, name: str) -> LeaseRow | None:
    """The lease row, or None if nobody holds it."""
    row = fetch_one(db, "SELECT * FROM leases WHERE name = ?", [name])
    return LeaseRow.from_row(row) if row else None


def lease_is_stale(lease: LeaseRow, stale_after: float = DEFAULT_STALE_AFTER, at: float | None = None) -> bool:
    """Heartbeat too old, or a dead pid on this host."""
    at = time.time() if at is None else at
    if at - lease.heartbeat_at > stale_after:
        return True
    return lease.host == this_host() and not pid_alive(lease.pid)


def acquire_lease(
    db: sqlite_utils.Database,
    name: str,
    holder: str,
    pid: int,
    host: str,
    stale_after: float = DEFAULT_STALE_AFTER,
    raise_if_held: bool = True,
) -> bool:
    """Take the lease (or take over a stale one). True when ``holder`` now holds it.

    If a live holder has it: raises LeaseHeldError naming its pid and host, or returns False when
    ``raise_if_held`` is False. Re-acquiring one's own lease just refreshes it.
    """
    with transaction(db):
        t = now()
        lease = get_lease(db, name)
        if lease is not None and lease.holder != holder and not lease_is_stale(lease, stale_after, t):
            if not raise_if_held:
                return False
            age = max(0.0, t - lease.heartbeat_at)
            raise LeaseHeldError(
                f"the {name} lease is held by pid {lease.pid} on host {lease.host} (heartbeat {age:.0f} s ago); "
                f"stop that process or wait {stale_after:.0f} s after it stops"
            )
        if lease is not None and lease.holder == holder:
            db.execute("UPDATE leases SET heartbeat_at = ? WHERE name = ?", [t, name])
        else:
            last = max(int(get_meta(db, _generation_key(name)) or 0), lease.generation if lease else 0)
            set_meta(db, _generation_key(name), str(last + 1))
            db.execute(
                "INSERT INTO leases (name, holder, pid, host, acquired_at, heartbeat_at, generation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, "
                "host = excluded.host, acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at, "
                "generation = excluded.generation",
                [name, holder, pid, host, t, t, last + 1],
            )
    return True


def acquire_fence(db: sqlite_utils.Database, name: str, holder: str, pid: int, host: str,
                  stale_after: float = DEFAULT_STALE_AFTER) -> Fence:
    """Take the lease (LeaseHeldError if a live holder has it) and return its fence."""
    acquire_lease(db, name, holder, pid, host, stale_after=stale_after)
    lease = get_lease(db, name)
    if lease is None or lease.holder != holder:  # released by someone in between: very unlikely
        raise LeaseLostError(f"the {name} lease was lost right after it was taken; try again")
    return Fence(name, holder, lease.generation)


def check_lease(db: sqlite_utils.Database, fence: Fence) -> None:
    """Raise LeaseLostError unless ``fence`` still holds its lease; call inside the write transaction."""
    lease = get_lease(db, fence.name)
    if lease is None or lease.holder != fence.holder or lease.generation != fence.generation:
        who = "nobody" if lease is None else f"pid {lease.pid} on {lease.host} (generation {lease.generation})"
        raise LeaseLostError(
            f"this worker lost the {fence.name} lease (generation {fence.generation}) to {who} while it was "
            "paused or too slow to renew it; it stopped without writing its result"
        )


def renew_lease(db: sqlite_utils.Database, name: str, holder: str, generation: int | None = None) -> bool:
    """Refresh the heartbeat; False if ``holder`` (of ``generation``, when given) no longer holds the
    lease (it was taken over)."""
    sql, params = "UPDATE leases SET heartbeat_at = ? WHERE name = ? AND holder = ?", [now(), name, holder]
    if generation is not None:
        sql += " AND generation = ?"
        params.append(generation)
    with transaction(db):
        return db.execute(sql, params).rowcount == 1


def release_lease(db: sqlite_utils.Database, name: str, holder: str) -> bool:
    """Give the lease up; False if ``holder`` did not hold it."""
    with transaction(db):
        return db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", [name, holder]).rowcount == 1
