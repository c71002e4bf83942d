"""Named leases (one worker per workspace): who holds it, and recovery when the holder died.

A lease is stale when its heartbeat is older than ``stale_after`` seconds, or when its holder runs
on this host and its pid no longer exists. A stale lease can be taken over.
"""

from __future__ import annotations

import os
import socket
import time

import sqlite_utils

from store.db import StoreError, fetch_one, now, transaction
from store.records import LeaseRow

DEFAULT_STALE_AFTER = 30.0


class LeaseHeldError(StoreError):
    """Another live process holds the lease."""


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
            db.execute(
                "INSERT INTO leases (name, holder, pid, host, acquired_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, "
                "host = excluded.host, acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at",
                [name, holder, pid, host, t, t],
            )
    return True


def renew_lease(db: sqlite_utils.Database, name: str, holder: str) -> bool:
    """Refresh the heartbeat; False if ``holder`` no longer holds the lease (it was taken over)."""
    with transaction(db):
        return db.execute(
            "UPDATE leases SET heartbeat_at = ? WHERE name = ? AND holder = ?", [now(), name, holder]
        ).rowcount == 1


def release_lease(db: sqlite_utils.Database, name: str, holder: str) -> bool:
    """Give the lease up; False if ``holder`` did not hold it."""
    with transaction(db):
        return db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", [name, holder]).rowcount == 1
