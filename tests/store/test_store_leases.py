"""Worker leases: acquire, refuse a live holder, recover a dead or silent one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from store.leases import (
    LeaseHeldError,
    acquire_lease,
    get_lease,
    lease_is_stale,
    pid_alive,
    release_lease,
    renew_lease,
    this_host,
)

HOST = this_host()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def _age_heartbeat(db, name: str, seconds: float) -> None:
    db.execute("UPDATE leases SET heartbeat_at = heartbeat_at - ? WHERE name = ?", [seconds, name])


def test_acquire_renew_release(db):
    me = f"{HOST}:{os.getpid()}:a"
    assert acquire_lease(db, "worker", me, os.getpid(), HOST) is True
    lease = get_lease(db, "worker")
    assert (lease.holder, lease.pid, lease.host) == (me, os.getpid(), HOST)
    assert acquire_lease(db, "worker", me, os.getpid(), HOST) is True  # re-entrant
    assert renew_lease(db, "worker", me) is True
    assert renew_lease(db, "worker", "someone-else") is False
    assert release_lease(db, "worker", "someone-else") is False
    assert release_lease(db, "worker", me) is True
    assert get_lease(db, "worker") is None


def test_live_foreign_holder_is_refused_with_pid_and_host(db):
    # The parent of this test process is alive: a "foreign" holder on this host with a fresh heartbeat.
    other_pid = os.getppid()
    assert acquire_lease(db, "worker", f"{HOST}:{other_pid}:x", other_pid, HOST)
    with pytest.raises(LeaseHeldError) as info:
        acquire_lease(db, "worker", f"{HOST}:{os.getpid()}:y", os.getpid(), HOST)
    message = str(info.value)
    assert f"pid {other_pid}" in message and f"host {HOST}" in message and "\n" not in message
    assert acquire_lease(db, "worker", "me", os.getpid(), HOST, raise_if_held=False) is False
    assert get_lease(db, "worker").pid == other_pid  # untouched


def test_dead_pid_on_this_host_is_recoverable(db, dead_pid):
    acquire_lease(db, "worker", f"{HOST}:{dead_pid}:old", dead_pid, HOST)
    assert lease_is_stale(get_lease(db, "worker"))  # heartbeat is fresh, but the pid is gone
    assert acquire_lease(db, "worker", "new", os.getpid(), HOST) is True
    lease = get_lease(db, "worker")
    assert (lease.holder, lease.pid) == ("new", os.getpid())
    assert renew_lease(db, "worker", f"{HOST}:{dead_pid}:old") is False  # the old holder lost it


def test_foreign_host_is_judged_by_heartbeat_only(db, dead_pid):
    acquire_lease(db, "worker", "remote", dead_pid, "some-other-host")
    # A pid on another host cannot be checked: with a fresh heartbeat the lease holds.
    with pytest.raises(LeaseHeldError, match="on host some-other-host"):
        acquire_lease(db, "worker", "me", os.getpid(), HOST, stale_after=30)
    _age_heartbeat(db, "worker", 31)
    assert acquire_lease(db, "worker", "me", os.getpid(), HOST, stale_after=30) is True
    assert get_lease(db, "worker").host == HOST


def test_old_heartbeat_of_a_live_pid_is_stale(db):
    other_pid = os.getppid()
    acquire_lease(db, "worker", "hung", other_pid, HOST)
    _age_heartbeat(db, "worker", 100)
    assert acquire_lease(db, "worker", "me", os.getpid(), HOST, stale_after=60) is True
