"""Keep a running execution's lease alive: one daemon thread per process renews the lease of
every try running in it until the try ends.

An active execution whose ``LeaseExpiresAt`` has passed is treated as crashed: the expiry scan
(at every batch start, and ``bfx recover``) aborts it, and a concurrent start of the same task
takes over. A task that runs longer than ``[bfx] lease_duration`` must therefore renew its lease
while it runs. Each lease is renewed every third of its duration, so two renewals may fail in a
row (a catalog blip) before the lease lapses. A keeper stops when its try ends (the callbacks
stop it), when the row is no longer active or no longer ours (aborted by a reset or an expiry
scan), and with the process: a task process that dies stops renewing, which is exactly how a
crash is seen.

The renewals run on one thread per process, started by the first keeper and shared by every
keeper after it (decision 0109). Starting and joining a thread per try cost 0.4-3 ms of each
routed task in ``dags test`` (52 tries in one process, the GIL contended by Airflow's in-process
API server); a keeper now only registers with that thread and, at its stop, waits only for a
renewal of its own that is in flight. A task process of a deployment runs one try: one thread,
as before. The renewals of several keepers in one process run one after another, each in its
own transaction.

A process can also end while its try goes on: Airflow parks the try (deferred to the triggerer,
waiting for a reschedule, awaiting input) and resumes it later in a new process. Every keeper
still running when the process exits is therefore looked at once more (``atexit``; Airflow's
task process runs the handlers registered after its fork): if Airflow's state of its try is one
of :data:`PARKED_STATES`, the lease is handed to Airflow (``CatalogStore.park``) instead of being
left to lapse, so that no expiry scan or dead-owner check aborts a try that is only waiting
(decision 0082). The resumed try's start takes the lease back.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_bfx.catalog.store import CatalogStore

log = logging.getLogger("airflow_provider_bfx.routing")

MIN_INTERVAL_SECONDS = 1.0
#: How long :meth:`LeaseKeeper.stop` waits for a renewal in flight (one short UPDATE, or a lock
#: wait): bounded, so that a hanging catalog cannot hold the end of a try forever.
STOP_JOIN_SECONDS = 10.0
#: Airflow task-instance states in which a try goes on without a process (decision 0082).
PARKED_STATES = frozenset({"deferred", "up_for_reschedule", "awaiting_input"})

_running: dict[int, LeaseKeeper] = {}  # execution id -> the keeper renewing it in this process
_running_lock = threading.Lock()
#: Wakes the renewer (a keeper added) and a stop() waiting for a renewal in flight.
_changed = threading.Condition(_running_lock)
_renewer: threading.Thread | None = None  # the renewal thread of this process, once started
_exit_hook_pid: int | None = None  # the process whose atexit list holds _hand_over_at_exit


def _forget_the_parents_keepers() -> None:
    """In a forked child: the parent's keepers renew nothing here and are not the child's to
    hand over at its exit, and the parent's renewal thread does not exist in the child."""
    global _running_lock, _changed, _renewer
    _running.clear()
    _running_lock = threading.Lock()
    _changed = threading.Condition(_running_lock)
    _renewer = None


os.register_at_fork(after_in_child=_forget_the_parents_keepers)


class LeaseKeeper:
    """Renews the lease of one execution in the background (see the module docstring)."""

    def __init__(
        self,
        store: CatalogStore,
        execution_id: int,
        owner: str,
        seconds: float,
        airflow_state: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.airflow_state = airflow_state
        self.execution_id = execution_id
        self.owner = owner
        self.seconds = seconds
        self.interval = max(seconds / 3.0, MIN_INTERVAL_SECONDS)
        self._stop = threading.Event()
        self._due = 0.0  # time.monotonic() of the next renewal
        self._in_flight = False  # a renewal of this keeper is running on the renewal thread

    def start(self) -> LeaseKeeper:
        """Start renewing; a keeper of the same execution still running in this process (the
        try deferred and resumed in one process, as under ``dag.test()``) is stopped first."""
        global _exit_hook_pid
        with _running_lock:
            previous = _running.get(self.execution_id)
            if _exit_hook_pid != os.getpid():
                atexit.register(_hand_over_at_exit)
                _exit_hook_pid = os.getpid()
        if previous is not None:
            previous.stop()
        with _changed:
            self._due = time.monotonic() + self.interval
            _running[self.execution_id] = self
            _ensure_renewer()
            _changed.notify_all()
        return self

    def stop(self) -> None:
        """Stop renewing, and wait (at most :data:`STOP_JOIN_SECONDS`) for a renewal of this
        lease in flight.

        The callbacks end the execution right after this returns: a renewal still running
        then would find the row no longer active and warn, falsely, that it was aborted by a
        reset. Waiting makes "no renewal after stop returns" true; should the wait time out (a
        catalog that hangs), the renewal sees the stop flag and ends without that warning."""
        self._stop.set()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        with _changed:
            if _running.get(self.execution_id) is self:
                del _running[self.execution_id]
            if threading.current_thread() is _renewer:
                return  # stopped by its own renewal: nothing else is in flight
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                _changed.wait(remaining)

    @property
    def running(self) -> bool:
        """Still renewing: started, not stopped, and its renewals still scheduled."""
        with _running_lock:
            scheduled = _running.get(self.execution_id) is self
            alive = _renewer is not None and _renewer.is_alive()
        return scheduled and alive and not self._stop.is_set()

    @property
    def renewing(self) -> bool:
        """Scheduled for another renewal, or with one in flight (False once it stopped and
        no renewal of it runs any more)."""
        with _running_lock:
            return self._in_flight or _running.get(self.execution_id) is self

    def _renew(self) -> None:
        """One renewal, on the renewal thread. Unschedules this keeper when the row is no
        longer active or no longer ours."""
        if self._stop.is_set():
            return
        try:
            kept = self.store.renew_lease(self.execution_id, self.owner, self.seconds)
        except Exception as exc:  # a catalog blip: try again at the next interval
            log.warning(
                "bfx: could not renew the lease of execution %s: %s", self.execution_id, exc
            )
            return
        if kept or self._stop.is_set():
            return  # renewed, or the try ended while this renewal ran: nothing was aborted
        log.warning(
            "bfx: execution %s is no longer active under owner %s (aborted by a reset or an"
            " expiry scan); its lease is no longer renewed",
            self.execution_id,
            self.owner,
        )
        with _changed:
            if _running.get(self.execution_id) is self:
                del _running[self.execution_id]

    def hand_over(self) -> bool:
        """At process exit: stop renewing and, if Airflow parked the try, hand the lease to
        Airflow. True when the catalog took the hand-over."""
        self.stop()
        state = self.airflow_state() if self.airflow_state is not None else None
        state = getattr(state, "value", state)
        if state not in PARKED_STATES:
            return False  # ended without its callbacks (or still running): the lease lapses
        parked = self.store.park(self.execution_id, self.owner, str(state))
        log.info(
            "[bfx] try parked by Airflow: execution_id=%s airflow_state=%s lease handed over=%s",
            self.execution_id,
            state,
            parked,
        )
        return parked


def _ensure_renewer() -> None:
    """Start this process's renewal thread unless it runs (caller holds ``_changed``)."""
    global _renewer
    if _renewer is not None and _renewer.is_alive():
        return
    _renewer = threading.Thread(target=_renew_forever, name="bfx-lease-renewer", daemon=True)
    _renewer.start()


def _renew_forever() -> None:
    """The renewal thread: renew each keeper when it is due, sleep until the next one is."""
    changed = _changed  # this process's condition (a forked child gets its own thread)
    while True:
        with changed:
            now = time.monotonic()
            due = [k for k in _running.values() if k._due <= now]
            if not due:
                nearest = min((k._due for k in _running.values()), default=None)
                changed.wait(None if nearest is None else nearest - now)
                continue
            for keeper in due:
                keeper._in_flight = True
        for keeper in due:
            try:
                keeper._renew()
            except Exception:  # never let one keeper end the renewals of the others
                log.exception("bfx: renewing the lease of execution %s", keeper.execution_id)
        with changed:
            for keeper in due:
                keeper._in_flight = False
                keeper._due = time.monotonic() + keeper.interval
            changed.notify_all()


def _hand_over_at_exit() -> None:
    """The ``atexit`` hook: every keeper still renewing when the process ends (see above)."""
    with _running_lock:
        keepers = list(_running.values())
    for keeper in keepers:
        try:
            keeper.hand_over()
        except Exception as exc:  # the catalog is down: the lease lapses, evidence closes it
            log.warning(
                "bfx: could not hand the lease of execution %s to Airflow: %s",
                keeper.execution_id,
                exc,
            )
