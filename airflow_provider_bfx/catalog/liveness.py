"""Whether a lease owner is known to be dead (DESIGN.md §5 "Leases").

A lease is live while ``LeaseExpiresAt`` is in the future *and its owner may still be running*.
The owner is ``host:pid``. On the host that wrote it, the process table answers at once: a pid
that no longer exists (or is a zombie waiting to be reaped after ``kill -9``) cannot renew its
lease, so its execution is stale now, not a lease duration from now. A run started right after
a crash therefore resumes instead of being taken for an overlapping run (issue 9, item 6).

Only "known dead" is ever concluded here. An owner on another host, an owner string that is not
``host:pid``, or a pid that exists (perhaps reused by another process) all count as possibly
alive, and the lease's own expiry decides, as before. The caveat is hosts that share a name and
not a process table (two containers given the same explicit hostname): there a pid of one is
looked up in the other. docs/decisions/0094-dead-lease-owners.md says what to do about it.

A try that Airflow *parks* outside any process (deferred to the triggerer, waiting for a
reschedule, awaiting input) ends its process without ending its try. Its task process hands the
lease to Airflow before it exits: ``LeaseOwner = 'airflow:<state>'``, ``LeaseExpiresAt`` NULL.
Such a lease is live whatever the clock says, and no process table can call it dead: only
Airflow's outcome (a callback of the resumed try, or the evidence adopted at the next start)
or an operator's ``bfx reset`` ends it (decision 0082).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from functools import cache


@cache
def this_host() -> str:
    """The host part this process writes into ``LeaseOwner`` (``socket.gethostname()``)."""
    return socket.gethostname()


def owner_of_this_process() -> str:
    """``LeaseOwner`` for a lease held by the calling process."""
    return f"{this_host()}:{os.getpid()}"


#: ``LeaseOwner`` prefix of a try Airflow holds outside any process (see the module docstring).
PARKED_PREFIX = "airflow:"


def parked_owner(airflow_state: str) -> str:
    """``LeaseOwner`` of a try parked by Airflow in ``airflow_state`` (e.g. ``deferred``)."""
    return f"{PARKED_PREFIX}{airflow_state}"


def is_parked(owner: str | None) -> bool:
    return bool(owner) and str(owner).startswith(PARKED_PREFIX)


def lease_live(owner: str | None, expires_at: datetime | None, now: datetime) -> bool:
    """The one rule of a live lease: parked by Airflow, or unexpired and not known dead."""
    if is_parked(owner):
        return True
    return expires_at is not None and expires_at > now and not owner_known_dead(owner)


def owner_known_dead(owner: str | None) -> bool:
    """True only when ``owner`` is ``host:pid`` of this host and that process is gone."""
    if not owner or is_parked(owner):
        return False
    host, sep, pid_text = owner.rpartition(":")
    if not sep or host != this_host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process killed but not yet reaped by its parent still has a pid; it runs nothing."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)
    except OSError:
        return False  # no /proc (not Linux) or it just went: decide by the lease alone
    return len(fields) == 2 and fields[1].split()[:1] in (["Z"], ["X"])
