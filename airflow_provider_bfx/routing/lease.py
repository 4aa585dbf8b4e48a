"""Keep a running execution's lease alive: a daemon thread renews it until the try ends.

An active execution whose ``LeaseExpiresAt`` has passed is treated as crashed: the expiry scan
(at every batch start, and ``bfx recover``) aborts it, and a concurrent start of the same task
takes over. A task that runs longer than ``[bfx] lease_duration`` must therefore renew its lease
while it runs. The thread renews every third of the duration, so two renewals may fail in a row
(a catalog blip) before the lease lapses. It stops when the try ends (the callbacks stop it),
when the row is no longer active or no longer ours (aborted by a reset or an expiry scan), and
with the process: a task process that dies stops renewing, which is exactly how a crash is seen.

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
_exit_hook_pid: int | None = None  # the process whose atexit list holds _hand_over_at_exit


def _forget_the_parents_keepers() -> None:
    """In a forked child: the parent's keepers renew nothing here and are not the child's to
    hand over at its exit."""
    global _running_lock
    _running.clear()
    _running_lock = threading.Lock()


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
        self._thread = threading.Thread(
            target=self._run, name=f"bfx-lease-{execution_id}", daemon=True
        )

    def start(self) -> LeaseKeeper:
        """Start renewing; a keeper of the same execution still running in this process (the
        try deferred and resumed in one process, as under ``dag.test()``) is stopped first."""
        global _exit_hook_pid
        with _running_lock:
            previous = _running.pop(self.execution_id, None)
            _running[self.execution_id] = self
            if _exit_hook_pid != os.getpid():
                atexit.register(_hand_over_at_exit)
                _exit_hook_pid = os.getpid()
        if previous is not None:
            previous.stop()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing, and wait (at most :data:`STOP_JOIN_SECONDS`) for a renewal in flight.

        The callbacks end the execution right after this returns: a renewal still running
        then would find the row no longer active and warn, falsely, that it was aborted by a
        reset. Joining makes "no renewal after stop returns" true; should the join time out (a
        catalog that hangs), the thread sees the stop flag and ends without that warning."""
        self._stop.set()
        with _running_lock:
            if _running.get(self.execution_id) is self:
                del _running[self.execution_id]
        thread = self._thread
        if thread.ident is not None and thread is not threading.current_thread():
            thread.join(STOP_JOIN_SECONDS)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                kept = self.store.renew_lease(self.execution_id, self.owner, self.seconds)
            except Exception as exc:  # a catalog blip: try again at the next interval
                log.warning(
                    "bfx: could not renew the lease of execution %s: %s", self.execution_id, exc
                )
                continue
            if not kept:
                if self._stop.is_set():
                    return  # the try ended while this renewal ran: nothing was aborted
                log.warning(
                    "bfx: execution %s is no longer active under owner %s (aborted by a reset or"
                    " an expiry scan); its lease is no longer renewed",
                    self.execution_id,
                    self.owner,
                )
                return

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
