"""Keep a running execution's lease alive: a daemon thread renews it until the try ends.

An active execution whose ``LeaseExpiresAt`` has passed is treated as crashed: the expiry scan
(at every batch start, and ``bfx recover``) aborts it, and a concurrent start of the same task
takes over. A task that runs longer than ``[bfx] lease_duration`` must therefore renew its lease
while it runs. The thread renews every third of the duration, so two renewals may fail in a row
(a catalog blip) before the lease lapses. It stops when the try ends (the callbacks stop it),
when the row is no longer active or no longer ours (aborted by a reset or an expiry scan), and
with the process: a task process that dies stops renewing, which is exactly how a crash is seen.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_bfx.catalog.store import CatalogStore

log = logging.getLogger("airflow_provider_bfx.routing")

MIN_INTERVAL_SECONDS = 1.0
#: How long :meth:`LeaseKeeper.stop` waits for a renewal in flight (one short UPDATE, or a lock
#: wait): bounded, so that a hanging catalog cannot hold the end of a try forever.
STOP_JOIN_SECONDS = 10.0


class LeaseKeeper:
    """Renews the lease of one execution in the background (see the module docstring)."""

    def __init__(self, store: CatalogStore, execution_id: int, owner: str, seconds: float) -> None:
        self.store = store
        self.execution_id = execution_id
        self.owner = owner
        self.seconds = seconds
        self.interval = max(seconds / 3.0, MIN_INTERVAL_SECONDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"bfx-lease-{execution_id}", daemon=True
        )

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing, and wait (at most :data:`STOP_JOIN_SECONDS`) for a renewal in flight.

        The callbacks end the execution right after this returns: a renewal still running
        then would find the row no longer active and warn, falsely, that it was aborted by a
        reset. Joining makes "no renewal after stop returns" true; should the join time out (a
        catalog that hangs), the thread sees the stop flag and ends without that warning."""
        self._stop.set()
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
