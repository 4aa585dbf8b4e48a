"""The catalog store: the public face of the catalog. No Airflow here.

:class:`CatalogStore` is a thin facade: each public verb runs one transition function of the
modules below inside one transaction (:meth:`~.txn.Catalog.transaction`, which owns the retry),
then logs the transition's token lines, only after the commit, so that a retried or failed
transition never logs a decision it did not write.

The rooms (docs/architecture.md):

* :mod:`.results`: requests (``BatchSpec``, ``TaskSpec``) and results (``TaskStarted`` ...);
* :mod:`.txn`: the ``Catalog`` (engine, schema, dialect, clock) and the transaction wrapper;
* :mod:`.dialects`: one class per engine (locks, ids, error classification);
* :mod:`.facts`: the read side (the facts query of a task start, the batch that decides);
* :mod:`.machine`: the decisions (pure, no I/O);
* :mod:`.tasks`, :mod:`.batches`, :mod:`.leases`, :mod:`.checkpoints`, :mod:`.adoption`,
  :mod:`.packages`: the transitions, ``..._txn(cat, conn, ...)`` functions that compose inside
  one transaction;
* :mod:`.rows`: the SQL pieces they share, and the one home of "which execution decides".

Every name this module exported before the split is still importable from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, select

from airflow_provider_bfx.catalog import (
    adoption,
    batches,
    checkpoints,
    guarded_start,
    keys,
    leases,
    skip_ahead,
    tasks,
    upstreams,
)
from airflow_provider_bfx.catalog.codes import CheckpointType
from airflow_provider_bfx.catalog.errors import CatalogUnavailableError as CatalogUnavailableError
from airflow_provider_bfx.catalog.facts import deciding_batch_query as _deciding_batch_query
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.packages import Unset as _Unset
from airflow_provider_bfx.catalog.packages import set_package_txn
from airflow_provider_bfx.catalog.results import BatchEnded as BatchEnded
from airflow_provider_bfx.catalog.results import BatchSpec as BatchSpec
from airflow_provider_bfx.catalog.results import Checkpoint as Checkpoint
from airflow_provider_bfx.catalog.results import ExecutionRecord as ExecutionRecord
from airflow_provider_bfx.catalog.results import ExpiredLease as ExpiredLease
from airflow_provider_bfx.catalog.results import RunAwaitingEvidence as RunAwaitingEvidence
from airflow_provider_bfx.catalog.results import RunEvidence as RunEvidence
from airflow_provider_bfx.catalog.results import SkippedAhead as SkippedAhead
from airflow_provider_bfx.catalog.results import TaskEnded as TaskEnded
from airflow_provider_bfx.catalog.results import TaskSpec as TaskSpec
from airflow_provider_bfx.catalog.results import TaskStarted as TaskStarted
from airflow_provider_bfx.catalog.results import default_lease_owner as default_lease_owner
from airflow_provider_bfx.catalog.rows import SELF as SELF
from airflow_provider_bfx.catalog.rows import decides as decides
from airflow_provider_bfx.catalog.rows import log_lines
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.catalog.txn import utcnow as utcnow
from airflow_provider_bfx.exceptions import CatalogStateError as CatalogStateError

T = TypeVar("T")


class CatalogStore(Catalog):
    """Applies the state machine to one catalog database (PostgreSQL, SQL Server or SQLite)."""

    # -- batches ------------------------------------------------------------------------------

    def deciding_batch_query(self, package_id: int) -> Select[Any]:
        """The batch execution of a DAG package that decides its next run (the one home of
        this rule: batch start, ``bfx plan`` and ``bfx reset`` all use it). A run skipped
        because the DAG was disabled decides nothing: the batch before it does."""
        return _deciding_batch_query(self, package_id)

    def start_batch(self, spec: BatchSpec) -> int:
        """Start (or find) the batch execution of a DAG run; returns its ExecutionID."""
        keys.check_airflow_ids(self.dialect, dag_id=spec.dag_id, run_id=spec.run_id)
        bid, lines = self.transaction(
            lambda conn: batches.start_batch_txn(self, conn, spec), "batch start"
        )
        log_lines(lines)
        return bid

    def end_batch(self, dag_id: str, run_id: str, *, succeeded: bool) -> BatchEnded | None:
        """Close the batch of a DAG run (listener, task side or reconciliation: same rows).

        Returns None when the run never had a routed task (no batch row)."""
        return self.transaction(
            lambda conn: batches.end_batch_txn(self, conn, dag_id, run_id, succeeded=succeeded),
            "batch end",
        )

    # -- tasks --------------------------------------------------------------------------------

    def start_task(self, spec: TaskSpec) -> TaskStarted:
        """The gate: decide whether this try of the task runs, restarts compute only, or skips."""
        keys.check_airflow_ids(
            self.dialect, dag_id=spec.batch.dag_id, run_id=spec.batch.run_id, task_id=spec.task_id
        )
        # A task's first start in its lineage is first one guarded INSERT (decision 0121).
        tried = guarded_start.worth_trying(spec) and guarded_start.start_guarded(self) is not None
        started = self._guarded_first(
            (lambda conn: guarded_start.start_task_guarded_txn(self, conn, spec))
            if tried
            else None,
            lambda conn: tasks.start_task_txn(self, conn, spec),
            "task start",
        )
        log_lines(started.log_lines)
        return started

    def _guarded_first(
        self,
        guarded: Callable[[Connection], T | None] | None,
        full: Callable[[Connection], T],
        what: str,
    ) -> T:
        """A transition whose answer the machine may know without the read: ``guarded`` first,
        one statement outside any transaction where the engine allows it; when it wrote nothing
        (None), ``full`` reads, decides and writes in a transaction of its own (decisions 0120,
        0121)."""
        if guarded is not None:
            done = self.transaction(guarded, what, one_statement=True)
            if done is not None:
                return done
        return self.transaction(full, what)

    def skip_ahead(self, batch: BatchSpec, specs: Sequence[TaskSpec]) -> list[SkippedAhead]:
        """The first start of a resumed run: write as completed (``C``), in one transaction,
        those of ``specs`` their own gates would skip (:mod:`.skip_ahead`). Logs each
        decision's ``BFX_SKIP_COMPLETED`` line."""
        if not specs:
            return []
        skipped = self.transaction(
            lambda conn: skip_ahead.skip_ahead_txn(self, conn, batch, specs), "skip ahead"
        )
        log_lines([s.line for s in skipped])
        return skipped

    def end_task(
        self,
        execution_id: int,
        outcome: TaskOutcome,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        error_detail: str | None = None,
    ) -> TaskEnded:
        """Record how one try ended (idempotent: a second call for an ended row changes
        nothing). A success or a skip is first one guarded statement; only when its guard
        does not hold is the end read, decided and written (:mod:`.tasks`, decision 0120)."""
        return self._guarded_first(
            (lambda conn: tasks.end_task_guarded_txn(self, conn, execution_id, outcome))
            if tasks.end_guarded(self, outcome) is not None
            else None,
            lambda conn: tasks.end_task_txn(
                self,
                conn,
                execution_id,
                outcome,
                error_type=error_type,
                error_message=error_message,
                error_detail=error_detail,
            ),
            "task end",
        )

    # -- Airflow's outcome is evidence --------------------------------------------------------

    def runs_awaiting_evidence(
        self,
        dag_id: str,
        run_id: str,
        *,
        task_id: str | None = None,
        item_fingerprint: str | None = None,
        limit: int = 5,
    ) -> list[RunAwaitingEvidence]:
        """The batches of ``dag_id``'s latest lineage whose rows Airflow may contradict
        (:func:`.adoption.runs_awaiting_evidence_txn`)."""
        return self.transaction(
            lambda conn: adoption.runs_awaiting_evidence_txn(
                self,
                conn,
                dag_id,
                run_id,
                task_id=task_id,
                item_fingerprint=item_fingerprint,
                limit=limit,
            ),
            "read",
        )

    def task_ids_of_batch(self, batch_execution_id: int) -> tuple[str, ...]:
        """The task ids with rows under one batch execution."""
        return self.transaction(
            lambda conn: adoption.task_ids_txn(self, conn, batch_execution_id, force=True), "read"
        )

    def adopt_airflow_states(self, dag_id: str, runs: Sequence[RunEvidence]) -> list[str]:
        """Bring the rows of these DAG runs in line with Airflow's record of them
        (:mod:`.evidence`): the latest try row of each task instance first, then the batch.
        Idempotent; returns the ``BFX_ADOPTED_AIRFLOW_STATE`` lines it logged."""
        lines: list[str] = []
        for run in runs:

            def work(conn: Connection, run: RunEvidence = run) -> list[str]:
                return adoption.adopt_run_txn(self, conn, dag_id, run)

            lines += self.transaction(work, "adoption")
        log_lines(lines)
        return lines

    # -- leases -------------------------------------------------------------------------------

    def renew_lease(self, execution_id: int, owner: str, seconds: float) -> bool:
        """Extend an active execution's lease; False when the row is no longer active or owned."""
        return self.transaction(
            lambda conn: leases.renew_lease_txn(self, conn, execution_id, owner, seconds),
            "lease renewal",
        )

    def park(self, execution_id: int, owner: str, airflow_state: str) -> bool:
        """Hand an active execution's lease to Airflow (:func:`.leases.park_txn`, decision
        0082); False when ``owner`` no longer held it."""
        return self.transaction(
            lambda conn: leases.park_txn(self, conn, execution_id, owner, airflow_state),
            "lease hand-over to Airflow",
        )

    def expire_leases(self) -> list[ExpiredLease]:
        """The expiry scan: active executions whose lease lapsed become A (NextLoadStatus D if
        their copy step landed, else R), each logged ``BFX_LEASE_EXPIRED``."""
        expired = self.transaction(
            lambda conn: leases.expire_txn(self, conn, self.clock()), "expiry scan"
        )
        log_lines([e.log_line for e in expired])
        return expired

    # -- checkpoints and row counts -----------------------------------------------------------

    def write_checkpoint(
        self,
        *,
        execution_id: int,
        scope_key: str,
        node: str,
        payload: Any,
        checkpoint_type: CheckpointType = CheckpointType.NODE_OUTPUT,
        iteration_key: str = "",
        item_fingerprint: str | None = None,
        operator_fingerprint: str | None = None,
    ) -> None:
        """Write (or overwrite) one checkpoint; the payload must be standard JSON (no NaN or
        Infinity), else :class:`~.payload.UnrecordablePayload` names the value and nothing is
        written. ``payload=UNRECORDED`` writes the "completed, output not stored" marker."""
        text = checkpoints.payload_text(payload, node)
        self.transaction(
            lambda conn: checkpoints.write_checkpoint_txn(
                self,
                conn,
                execution_id=execution_id,
                scope_key=scope_key,
                node=node,
                text=text,
                checkpoint_type=checkpoint_type,
                iteration_key=iteration_key,
                item_fingerprint=item_fingerprint,
                operator_fingerprint=operator_fingerprint,
            ),
            "checkpoint write",
        )

    def read_checkpoints(
        self, scope_key: str, checkpoint_type: CheckpointType, node: str | None = None
    ) -> list[Checkpoint]:
        return self.transaction(
            lambda conn: checkpoints.read_checkpoints_txn(
                self, conn, scope_key, checkpoint_type, node
            ),
            "checkpoint read",
        )

    def read_foreach_progress(self, scope_key: str, node: str) -> dict[int, tuple[str, str | None]]:
        """``{iteration index: (item fingerprint, operator fingerprint)}`` of one foreach loop
        (the fingerprints only, never the payloads)."""
        return self.transaction(
            lambda conn: checkpoints.read_foreach_progress_txn(self, conn, scope_key, node),
            "foreach progress read",
        )

    def log_row_counts(self, execution_id: int, counts: Iterable[tuple[str, str, int]]) -> None:
        """Append row counts (never overwritten: a second count is a second row)."""
        found = list(counts)  # read once: a retried transaction writes the same rows
        if not found:
            return
        self.transaction(
            lambda conn: checkpoints.log_row_counts_txn(self, conn, execution_id, found),
            "row count",
        )

    # -- packages and rows (operations) ---------------------------------------------------------

    def set_package(
        self,
        dag_id: str,
        task_id: str | None = None,
        *,
        enabled: bool | None = None,
        retry_limit: int | None = None,
        max_resume_age: int | None | type[_Unset] = _Unset,
    ) -> None:
        """Change the settings of a DAG's package (``task_id`` None) or of one of its tasks,
        registering it when it is not yet (a task's under its DAG's package)."""
        self.transaction(
            lambda conn: set_package_txn(
                self,
                conn,
                dag_id,
                task_id,
                enabled=enabled,
                retry_limit=retry_limit,
                max_resume_age=max_resume_age,
            ),
            "package update",
        )

    def find_execution(self, external_id: str) -> Any | None:
        """The row of one Airflow object by its ``ExternalExecutionID`` (read-only), or None:
        callbacks in another process find the try the gate started without deciding again."""
        E = self.s.Execution
        query = select(E).where(E.c.ExternalExecutionID == external_id)
        return self.transaction(lambda conn: conn.execute(query).first(), "read")

    def find_try(self, external_id: str) -> ExecutionRecord | None:
        """:meth:`find_execution` as a typed record (what routing reads)."""
        row = self.find_execution(external_id)
        return None if row is None else ExecutionRecord.of_row(row)

    def task_records(self, dag_id: str, run_id: str) -> list[ExecutionRecord]:
        """The task rows of one DAG run, oldest first, as typed records (what routing reads)."""
        return [
            ExecutionRecord.of_row(row)
            for row in self.executions(dag_id, run_id)
            if row.TaskId is not None
        ]

    def latest_task_records(
        self, dag_id: str, run_id: str, task_ids: Iterable[str]
    ) -> list[ExecutionRecord]:
        """The latest row of each (task, map index) of ``task_ids`` in one DAG run, oldest
        first: what the gate's upstream check reads. Its cost follows the number of those
        rows, not the run's size (:mod:`.upstreams`, decision 0100)."""
        wanted = tuple(task_ids)  # read once: a retried transaction reads the same tasks
        if not wanted:
            return []
        return self.transaction(
            lambda conn: upstreams.latest_task_rows_txn(self, conn, dag_id, run_id, wanted),
            "read",
        )

    def executions(self, dag_id: str, run_id: str | None = None) -> Sequence[Any]:
        """Rows of a DAG (optionally one run), oldest first: for ``bfx history`` and the demo."""
        E = self.s.Execution
        query = select(E).where(E.c.DagId == dag_id)
        if run_id is not None:
            query = query.where(E.c.RunId == run_id)
        return self.transaction(
            lambda conn: conn.execute(query.order_by(E.c.ExecutionID)).all(), "read"
        )
