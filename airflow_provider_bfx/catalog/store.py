"""The catalog store: reads the facts, asks :mod:`.machine`, writes the decision. No Airflow here.

Every transition runs in ONE transaction that first locks the batch row (``FOR UPDATE`` on
PostgreSQL, ``UPDLOCK, ROWLOCK`` on SQL Server, ``BEGIN IMMEDIATE`` on SQLite). Concurrent
tasks of one batch therefore serialise on that row, so a task ending successfully can never
miss the batch's failure stamping, and a final failure can never miss a sibling's success.

Round trips are budgeted: on the common path a task start is one locking SELECT that gathers
every fact (batch row, task package, an earlier row with the same key, other active executions,
the latest terminal execution of the lineage, and the next ExecutionID), one INSERT, and the
COMMIT. Rare paths (first run of a DAG, stale leases, the RERUN policy) add statements.

Transient errors (connection drops, deadlock victims, SQLite busy) are retried briefly with the
whole transition re-run from its first read; log tokens are emitted only after the commit, so a
retried or failed transition never logs a decision it did not write.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from airflow_provider_bfx.catalog import evidence, keys, machine
from airflow_provider_bfx.catalog.codes import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    CheckpointType,
    CorruptRowError,
    ExecutionStatus,
    NextLoadStatus,
    Token,
    VersionMismatchPolicy,
    format_token,
    parse_next_load_status,
    parse_status,
)
from airflow_provider_bfx.catalog.errors import CatalogUnavailableError as CatalogUnavailableError
from airflow_provider_bfx.catalog.errors import Verdict, diagnose, misconfigured
from airflow_provider_bfx.catalog.liveness import (
    PARKED_PREFIX,
    lease_live,
    owner_known_dead,
    owner_of_this_process,
    parked_owner,
    this_host,
)
from airflow_provider_bfx.catalog.machine import ResumeScope, Run, TaskOutcome
from airflow_provider_bfx.catalog.payload import UNRECORDED, decode_payload, encode_payload
from airflow_provider_bfx.catalog.schema import CatalogSchema, build_schema

log = logging.getLogger("airflow_provider_bfx.catalog")

T = TypeVar("T")

_ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)
_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


class CatalogStateError(RuntimeError):
    """The catalog holds rows that contradict the request (e.g. ending an unknown execution)."""


def utcnow() -> datetime:
    """Naive UTC: the catalog stores UTC without a zone on every engine."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def default_lease_owner() -> str:
    return owner_of_this_process()


# ---------------------------------------------------------------------------------------------
# Requests and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSpec:
    """A DAG run, as the catalog needs to know it."""

    dag_id: str
    run_id: str
    logical_date: datetime | None = None
    full_rerun: bool = False
    resume_scope: ResumeScope = ResumeScope.LINEAGE
    parent_execution_id: int | None = None  # the triggering task's execution (nested batch)
    retry_limit: int | None = None  # overrides Package.RetryLimit when set
    # Settings a DAG package row gets when it is first registered ([bfx] retry_limit and
    # max_resume_age); an existing row keeps what is in the catalog (a DBA may have edited it).
    default_retry_limit: int | None = None
    default_max_resume_age: int | None = None

    @property
    def external_id(self) -> str:
        return keys.batch_external_id(self.dag_id, self.run_id)


@dataclass(frozen=True)
class TaskSpec:
    """One try of one task instance."""

    batch: BatchSpec
    task_id: str
    map_index: int = keys.UNMAPPED
    try_number: int = 1
    item_fingerprint: str = keys.NO_ITEM
    operator_fingerprint: str | None = None
    policy: VersionMismatchPolicy = VersionMismatchPolicy.WARN
    decides_shape: bool = False
    lease_owner: str | None = None
    lease_seconds: float = 60.0

    @property
    def external_id(self) -> str:
        return keys.task_external_id(
            self.batch.dag_id, self.batch.run_id, self.task_id, self.map_index, self.try_number
        )


@dataclass(frozen=True)
class TaskStarted:
    """What a task start decided; the execution handle is built from it."""

    execution_id: int
    batch_execution_id: int
    original_execution_id: int
    lineage_id: int
    package_id: int
    status: ExecutionStatus
    next_load_status: NextLoadStatus
    audit_id: int | None
    attempt_number: int
    run: Run
    reason: str
    scope_key: str
    prior_execution_id: int | None = None
    failure_message: str | None = None
    log_lines: tuple[str, ...] = ()
    repeated: bool = False  # the same key was started before: this is that row, unchanged


@dataclass(frozen=True)
class TaskEnded:
    execution_id: int
    status: ExecutionStatus
    next_load_status: NextLoadStatus
    changed: bool
    batch_failed: bool = False
    log_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchEnded:
    execution_id: int
    status: ExecutionStatus
    next_load_status: NextLoadStatus
    changed: bool


@dataclass(frozen=True)
class RunAwaitingEvidence:
    """A batch of a DAG's latest lineage whose rows may disagree with what Airflow recorded
    (DESIGN.md §4, evidence)."""

    run_id: str
    batch_execution_id: int
    #: Closed cleanly (S, ended, no active row): only the DAG run's state needs asking.
    settled: bool
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class RunEvidence:
    """Airflow's record of one DAG run: its state and the state of each task instance, keyed
    by (task_id, map_index) with ``map_index`` -1 for an unmapped task."""

    run_id: str
    dag_run_state: str | None
    task_states: Mapping[tuple[str, int], str | None]


@dataclass(frozen=True)
class ExpiredLease:
    execution_id: int
    next_load_status: NextLoadStatus
    log_line: str


@dataclass(frozen=True)
class Checkpoint:
    execution_id: int
    node: str
    iteration_key: str
    item_fingerprint: str | None
    operator_fingerprint: str | None
    payload: Any  # the JSON value, or payload.UNRECORDED: completed, output not stored (NULL)


@dataclass(frozen=True)
class _Parent:
    """The task execution a nested batch was triggered by, as read at its batch start."""

    execution: machine.ParentExecution
    dag_id: str | None
    task_id: str
    lineage_id: int | None
    package_id: int
    item_fingerprint: str


class _Unset:
    """Marker: leave a column as it is."""


class _Self:
    """Marker: this column takes the new row's own ExecutionID."""

    def __repr__(self) -> str:
        return "SELF"


SELF: Any = _Self()


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class CatalogStore:
    """Applies the state machine to one catalog database (PostgreSQL, SQL Server or SQLite)."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utcnow,
        retry_seconds: float = 5.0,
        check_schema: bool = True,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.s: CatalogSchema = build_schema(self.dialect)
        self.clock = clock
        self.retry_seconds = retry_seconds
        self._schema_checked = not check_schema

    # -- transactions -------------------------------------------------------------------------

    def _transact(self, work: Callable[[Connection], T], what: str) -> T:
        if not self._schema_checked:
            from airflow_provider_bfx.catalog.migrate import check_schema

            self._with_retries(lambda: check_schema(self.engine), what)
            self._schema_checked = True

        def once() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return self._with_retries(once, what)

    def _with_retries(self, fn: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        integrity_retries = 5
        while True:
            try:
                return fn()
            except IntegrityError:
                # Two processes registered the same package or batch row at once: the loser
                # re-runs the transition and finds the winner's row.
                integrity_retries -= 1
                if integrity_retries < 0:
                    raise
            except DBAPIError as exc:
                # Decided by the driver's error code (catalog/errors.py, decision 0090): only a
                # catalog that cannot be reached is unavailable; one that answers with an error
                # a person must fix is misconfigured, and retrying would not fix it.
                found = diagnose(exc, self.engine)
                where = self.engine.url.render_as_string(hide_password=True)
                if found.verdict is Verdict.MISCONFIGURED:
                    raise misconfigured(exc, found, where) from exc
                if found.verdict is Verdict.OTHER:
                    raise
                if time.monotonic() >= deadline:
                    raise CatalogUnavailableError(
                        f"catalog at {where} is unavailable during {what} ({found.code}):"
                        f" {_first_line(exc)}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _lock(self, query: Select[Any], table: Any) -> Select[Any]:
        if self.dialect == "postgresql":
            return query.with_for_update(of=table)
        if self.dialect == "mssql":
            return query.with_hint(table, "WITH (UPDLOCK, ROWLOCK)", "mssql")
        return query  # SQLite: BEGIN IMMEDIATE already holds the write lock

    def _copy_landed(self, row: Any) -> Any:
        """EXISTS: a copy step of ``row``'s task and item landed in its lineage (a ``copy``
        NODE_OUTPUT checkpoint written by any execution of it there)."""
        E, C = self.s.Execution, self.s.ExecutionCheckpoint
        w, c = E.alias("w"), C.alias("c")
        return exists().where(
            c.c.ExecutionID == w.c.ExecutionID,
            c.c.CheckpointType == CheckpointType.NODE_OUTPUT.value,
            c.c.NodeKey == keys.COPY_NODE,
            w.c.LineageID == row.c.LineageID,
            w.c.PackageID == row.c.PackageID,
            w.c.ItemFingerprint == row.c.ItemFingerprint,
        )

    def _next_id_column(self) -> Any:
        """The next ExecutionID, read inside the facts query so the INSERT can also set
        OriginalExecutionID and AuditID to it (one statement instead of INSERT + UPDATE)."""
        E = self.s.Execution
        if self.dialect == "postgresql":
            seq = func.pg_get_serial_sequence(f"{self.s.schema}.{E.name}", E.c.ExecutionID.name)
            return func.nextval(seq).label("next_id")
        if self.dialect == "sqlite":
            # Safe: BEGIN IMMEDIATE makes this transaction the only writer.
            return (
                select(func.coalesce(func.max(E.c.ExecutionID), 0) + 1)
                .scalar_subquery()
                .label("next_id")
            )
        return literal(None).label("next_id")  # SQL Server: identity, then an UPDATE

    def _insert_execution(
        self, conn: Connection, next_id: int | None, values: dict[str, Any]
    ) -> int:
        """Insert an Execution row whose OriginalExecutionID/LineageID/AuditID may be itself
        (passed as the marker ``SELF``)."""
        E = self.s.Execution
        if next_id is not None:
            row = {k: (next_id if v is SELF else v) for k, v in values.items()}
            conn.execute(insert(E).values(ExecutionID=next_id, **row))
            return next_id
        plain = {k: (None if v is SELF else v) for k, v in values.items()}
        new_id = int(
            conn.execute(insert(E).values(**plain).returning(E.c.ExecutionID)).scalar_one()
        )
        selfish = {k: new_id for k, v in values.items() if v is SELF}
        if selfish:
            conn.execute(update(E).where(E.c.ExecutionID == new_id).values(**selfish))
        return new_id

    # -- packages -----------------------------------------------------------------------------

    def _package_query(self, dag_id: str, task_id: str | None) -> Select[Any]:
        """The package of a DAG (``task_id`` None) or of one of its tasks, by its identity."""
        P = self.s.Package
        task = P.c.TaskId.is_(None) if task_id is None else P.c.TaskId == task_id
        return select(P).where(P.c.DagId == dag_id, task)

    def _ensure_package(
        self,
        conn: Connection,
        dag_id: str,
        task_id: str | None,
        *,
        parent_id: int | None,
        retry_limit: int | None = None,
        max_resume_age: int | None = None,
    ) -> Any:
        """The package row of (``dag_id``, ``task_id``), registered on first sight.

        A package that has executions but no row was deleted by hand (the foreign key stops
        that unless it is switched off, as in the ``sqlite3`` shell): recreating it would start
        its history over in silence, so the row is named instead.
        """
        P, E = self.s.Package, self.s.Execution
        row = conn.execute(self._package_query(dag_id, task_id)).first()
        if row is not None:
            return row
        task = E.c.TaskId.is_(None) if task_id is None else E.c.TaskId == task_id
        orphan = conn.execute(
            select(E.c.ExecutionID, E.c.PackageID)
            .where(E.c.DagId == dag_id, task)
            .order_by(E.c.ExecutionID)
            .limit(1)
        ).first()
        if orphan is not None:
            # A start racing this one may have committed the package and its first execution
            # between the two reads above (READ COMMITTED reads each statement afresh): then the
            # row is there now. Only a row still missing was deleted.
            row = conn.execute(self._package_query(dag_id, task_id)).first()
            if row is not None:
                return row
            what = f"DAG {dag_id!r}" + ("" if task_id is None else f" task {task_id!r}")
            raise CatalogStateError(
                f"{self.s.qualified(P)} has no row for {what}, but"
                f" {self.s.qualified(E)} row ExecutionID={orphan.ExecutionID} ran it under"
                f" PackageID={orphan.PackageID}: the Package row was deleted by hand. Restore"
                f" it (PackageID={orphan.PackageID}, DagId={dag_id!r}, TaskId={task_id!r}),"
                " or delete that package's executions too to start its history over"
            )
        now = self.clock()
        settings: dict[str, Any] = {}
        if retry_limit is not None:
            settings["RetryLimit"] = retry_limit
        if max_resume_age is not None:
            settings["MaxResumeAge"] = max_resume_age
        conn.execute(
            insert(P).values(
                PackageName=keys.package_name(dag_id, task_id),
                DagId=dag_id,
                TaskId=task_id,
                ParentPackageID=parent_id,
                IsBatch=1 if task_id is None else 0,
                IsEnabled=1,
                CreatedAt=now,
                UpdatedAt=now,
                **settings,
            )
        )
        return conn.execute(self._package_query(dag_id, task_id)).one()

    # -- batch start --------------------------------------------------------------------------

    def _start_batch(self, conn: Connection, spec: BatchSpec, now: datetime) -> list[str]:
        """Create the batch row for a DAG run seen for the first time (under the DAG package's
        row lock, so two first tasks of one run, or two runs of one DAG, decide one at a time)."""
        E, P = self.s.Execution, self.s.Package
        pkg = self._ensure_package(
            conn,
            spec.dag_id,
            None,
            parent_id=None,
            retry_limit=spec.default_retry_limit,
            max_resume_age=spec.default_max_resume_age,
        )
        conn.execute(self._lock(select(P.c.PackageID).where(P.c.PackageID == pkg.PackageID), P))
        if conn.execute(
            select(E.c.ExecutionID).where(E.c.ExternalExecutionID == spec.external_id)
        ).first():
            return []  # another task of this run created it while we waited for the lock

        # DESIGN.md §5: an expiry scan at every batch start, so that a task that crashed with
        # its lease lapsed counts as aborted when the batch it left open is reconciled.
        lines = [e.log_line for e in self._expire(conn, now)]
        parent = self._parent_execution(conn, spec)
        previous = self._previous_batch(conn, pkg.PackageID, now, parent=parent)
        facts = machine.BatchStartFacts(
            now=now,
            package_enabled=bool(pkg.IsEnabled),
            previous=previous,
            retry_limit=spec.retry_limit if spec.retry_limit is not None else int(pkg.RetryLimit),
            max_resume_age=pkg.MaxResumeAge,
            full_rerun_requested=spec.full_rerun,
            resume_scope=spec.resume_scope,
            logical_date=spec.logical_date,
            parent=None if parent is None else parent.execution,
        )
        decision = machine.batch_start(facts)
        if decision.reconcile is not None:
            assert previous is not None
            self._apply_batch_end(
                conn,
                decision.reconcile.execution_id,
                previous.original_execution_id,
                decision.reconcile.succeeded,
                now,
                close=True,
            )
            lines.append(_line(decision.reconcile.emit, dag=spec.dag_id))
        start = decision.start
        prev = decision.previous
        resume = decision.resumes and prev is not None
        new_id = self._insert_execution(
            conn,
            self._peek_next_id(conn),
            dict(
                ParentExecutionID=spec.parent_execution_id,
                OriginalExecutionID=prev.original_execution_id if resume and prev else SELF,
                LineageID=prev.original_execution_id if resume and prev else SELF,
                AuditID=SELF,
                ExternalExecutionID=spec.external_id,
                PackageID=pkg.PackageID,
                ExecutionStatus=start.status.value,
                NextLoadStatus=start.next_load_status.value,
                AttemptNumber=prev.attempt_number + 1 if resume and prev else 1,
                ItemFingerprint=keys.NO_ITEM,
                StartTime=now,
                EndTime=None if start.status.is_active else now,
                DagId=spec.dag_id,
                RunId=spec.run_id,
                LogicalDate=spec.logical_date,
                UpdatedAt=now,
            ),
        )
        for emit in start.emits:
            lines.append(_line(emit, dag=spec.dag_id, batch_execution_id=new_id))
        if parent is not None:
            lines.append(
                _nested_line(
                    dag=spec.dag_id,
                    batch_execution_id=new_id,
                    parent_execution_id=parent.execution.execution_id,
                    parent_dag=parent.dag_id,
                    parent_task=parent.task_id,
                    parent_lineage=parent.execution.lineage,
                    lineage="resume" if resume else "fresh",
                    reason=start.reason,
                )
            )
        return lines

    def _parent_execution(self, conn: Connection, spec: BatchSpec) -> _Parent | None:
        """The task execution that triggered this DAG run (``spec.parent_execution_id``), or
        None for a top-level batch. An id that names no task execution of this catalog is an
        error, never a silent top-level start (docs/decisions/0070)."""
        if spec.parent_execution_id is None:
            return None
        E = self.s.Execution
        row = conn.execute(
            select(
                E.c.ExecutionID,
                E.c.OriginalExecutionID,
                E.c.LineageID,
                E.c.PackageID,
                E.c.ItemFingerprint,
                E.c.DagId,
                E.c.TaskId,
            ).where(E.c.ExecutionID == spec.parent_execution_id)
        ).first()
        where = f"{self.s.qualified(E)} row ExecutionID={spec.parent_execution_id}"
        fix = (
            " Trigger the run from a routed task, or remove bfx.parent_execution_id from the"
            " run's conf to start it as a top-level batch."
        )
        if row is None:
            raise CatalogStateError(
                f"DAG run {spec.dag_id}/{spec.run_id}: its conf names parent_execution_id="
                f"{spec.parent_execution_id}, but {where} does not exist in this catalog." + fix
            )
        if row.TaskId is None:
            raise CatalogStateError(
                f"DAG run {spec.dag_id}/{spec.run_id}: its conf names parent_execution_id="
                f"{spec.parent_execution_id}, but {where} is a batch execution (a DAG run of"
                f" {row.DagId!r}), not the task execution that triggered this run." + fix
            )
        return _Parent(
            machine.ParentExecution(
                execution_id=int(row.ExecutionID),
                lineage=int(row.OriginalExecutionID or row.ExecutionID),
            ),
            dag_id=row.DagId,
            task_id=row.TaskId,
            lineage_id=row.LineageID,
            package_id=row.PackageID,
            item_fingerprint=row.ItemFingerprint,
        )

    def _peek_next_id(self, conn: Connection) -> int | None:
        if self.dialect == "mssql":
            return None
        return int(conn.execute(select(self._next_id_column())).scalar_one())

    def deciding_batch_query(self, package_id: int) -> Select[Any]:
        """The batch execution of a DAG package that decides its next run (the one home of this
        rule: batch start, ``bfx plan`` and ``bfx reset`` all use it). A run skipped because the
        DAG was disabled decides nothing: the batch before it does."""
        E = self.s.Execution
        return (
            select(E)
            .where(
                E.c.PackageID == package_id, E.c.ExecutionStatus != ExecutionStatus.SKIPPED.value
            )
            .order_by(E.c.ExecutionID.desc())
            .limit(1)
        )

    def _previous_batch(
        self, conn: Connection, package_id: int, now: datetime, *, parent: _Parent | None = None
    ) -> machine.PreviousBatch | None:
        E = self.s.Execution
        latest = self.deciding_batch_query(package_id)
        row = None
        if parent is not None:
            # A nested batch: the latest batch of this DAG triggered from the same lineage of
            # the same parent task (its tries and resumed attempts), so that another trigger
            # of the same DAG (another task, another item) in between does not hide it. None:
            # the latest batch of the DAG, which the machine then starts fresh from.
            trig = E.alias("trig")
            triggers = select(trig.c.ExecutionID).where(
                trig.c.LineageID == parent.lineage_id,
                trig.c.PackageID == parent.package_id,
                trig.c.ItemFingerprint == parent.item_fingerprint,
            )
            row = conn.execute(latest.where(E.c.ParentExecutionID.in_(triggers))).first()
        if row is None:
            row = conn.execute(latest).first()
        if row is None:
            return None
        child = E.alias("child")
        # Live anywhere in the lineage: a try of an earlier attempt may still be running. The
        # owners are read (few rows are active) so that one known dead does not count.
        live_owners = conn.execute(
            select(child.c.LeaseOwner, child.c.LeaseExpiresAt).where(
                child.c.LineageID == row.LineageID,
                child.c.TaskId.is_not(None),
                child.c.ExecutionStatus.in_(_ACTIVE),
                or_(child.c.LeaseExpiresAt > now, child.c.LeaseOwner.startswith(PARKED_PREFIX)),
            )
        ).all()
        has_live = any(lease_live(owner, expires, now) for owner, expires in live_owners)
        failed = exists().where(
            child.c.ParentExecutionID == row.ExecutionID,
            child.c.ExecutionStatus.in_(["F", "A"]),
        )
        origin = E.alias("origin")
        started = (
            select(origin.c.StartTime)
            .where(origin.c.ExecutionID == row.OriginalExecutionID)
            .scalar_subquery()
        )
        trigger = E.alias("trigger")
        parent_lineage = (
            select(func.coalesce(trigger.c.OriginalExecutionID, trigger.c.ExecutionID))
            .where(trigger.c.ExecutionID == row.ParentExecutionID)
            .scalar_subquery()
        )
        has_failed, lineage_started, triggered_from = conn.execute(
            select(
                _flag(failed).label("failed"),
                started.label("started"),
                parent_lineage.label("parent_lineage"),
            )
        ).one()
        where = f"{self.s.qualified(E)} row ExecutionID={row.ExecutionID}"
        return machine.PreviousBatch(
            execution_id=row.ExecutionID,
            status=parse_status(row.ExecutionStatus, row=where),
            next_load_status=parse_next_load_status(row.NextLoadStatus, row=where),
            original_execution_id=row.OriginalExecutionID or row.ExecutionID,
            attempt_number=row.AttemptNumber,
            lineage_started_at=lineage_started or row.StartTime,
            logical_date=row.LogicalDate,
            has_live_task=bool(has_live),
            has_failed_task=bool(has_failed),
            parent_lineage=None if triggered_from is None else int(triggered_from),
        )

    def start_batch(self, spec: BatchSpec) -> int:
        """Start (or find) the batch execution of a DAG run; returns its ExecutionID."""
        keys.check_airflow_ids(self.dialect, dag_id=spec.dag_id, run_id=spec.run_id)

        def work(conn: Connection) -> tuple[int, list[str]]:
            lines = self._start_batch(conn, spec, self.clock())
            E = self.s.Execution
            bid = conn.execute(
                select(E.c.ExecutionID).where(E.c.ExternalExecutionID == spec.external_id)
            ).scalar_one()
            return int(bid), lines

        bid, lines = self._transact(work, "batch start")
        _log_lines(lines)
        return bid

    # -- task start ---------------------------------------------------------------------------

    @functools.cached_property
    def _task_facts(self) -> Select[Any]:
        """The task-start facts query, built once per store: constructing it costs milliseconds
        of Python (seven aliases, ~170 columns), more than the statement itself takes to run.
        Parameters: ``p_item``, ``p_dag``, ``p_task``, ``p_task_key``, ``p_batch_key``."""
        E, P = self.s.Execution, self.s.Package
        b, bp, tp = E.alias("b"), P.alias("bp"), P.alias("tp")
        x, a, p = E.alias("x"), E.alias("a"), E.alias("p")
        inner = E.alias("inner")
        prior_id = (
            select(func.max(inner.c.ExecutionID))
            .where(
                inner.c.LineageID == b.c.LineageID,
                inner.c.PackageID == tp.c.PackageID,
                inner.c.ItemFingerprint == bindparam("p_item"),
                decides(inner),
            )
            .scalar_subquery()
        )
        # Did a copy step of the active execution's lineage land? (Only read for stale rows.)
        active_copy = self._copy_landed(a)
        # The latest copy checkpoint of this task and item in this lineage, and its writer.
        lc, lw, cw = self.s.ExecutionCheckpoint.alias("lc"), E.alias("lw"), E.alias("cw")
        cc = self.s.ExecutionCheckpoint.alias("cc")
        landed_id = (
            select(func.max(cc.c.CheckpointID))
            .select_from(cc.join(cw, cw.c.ExecutionID == cc.c.ExecutionID))
            .where(
                cc.c.CheckpointType == CheckpointType.NODE_OUTPUT.value,
                cc.c.NodeKey == keys.COPY_NODE,
                cw.c.LineageID == b.c.LineageID,
                cw.c.PackageID == tp.c.PackageID,
                cw.c.ItemFingerprint == bindparam("p_item"),
            )
            .scalar_subquery()
        )
        first = E.alias("first")
        first_id = (
            select(func.min(first.c.ExecutionID))
            .where(
                first.c.LineageID == b.c.LineageID,
                first.c.PackageID == tp.c.PackageID,
                first.c.ItemFingerprint == bindparam("p_item"),
            )
            .scalar_subquery()
        )
        cols = [
            first_id.label("first_id"),
            lw.c.ExecutionID.label("l_writer"),
            lw.c.AuditID.label("l_audit"),
            func.coalesce(lc.c.OperatorFingerprint, lw.c.OperatorFingerprint).label("l_opfp"),
            b.c.ExecutionID.label("b_id"),
            b.c.ExecutionStatus.label("b_status"),
            b.c.LineageID.label("b_lineage"),
            b.c.PackageID.label("b_package"),
            b.c.EndTime.label("b_end"),
            bp.c.IsEnabled.label("b_enabled"),
            tp.c.PackageID.label("tp_id"),
            tp.c.IsEnabled.label("tp_enabled"),
            x.c.ExecutionID.label("x_id"),
            a.c.ExecutionID.label("a_id"),
            a.c.LeaseOwner.label("a_owner"),
            a.c.LeaseExpiresAt.label("a_expires"),
            a.c.LineageID.label("a_lineage"),
            a.c.AuditID.label("a_audit"),
            a.c.OriginalExecutionID.label("a_original"),
            a.c.AttemptNumber.label("a_attempt"),
            a.c.OperatorFingerprint.label("a_opfp"),
            _flag(active_copy).label("a_copy"),
            p.c.ExecutionID.label("p_id"),
            p.c.ExecutionStatus.label("p_status"),
            p.c.NextLoadStatus.label("p_nls"),
            p.c.AuditID.label("p_audit"),
            p.c.OriginalExecutionID.label("p_original"),
            p.c.AttemptNumber.label("p_attempt"),
            p.c.OperatorFingerprint.label("p_opfp"),
            self._next_id_column(),
        ]
        frm = (
            b.join(bp, bp.c.PackageID == b.c.PackageID)
            .outerjoin(
                tp, and_(tp.c.DagId == bindparam("p_dag"), tp.c.TaskId == bindparam("p_task"))
            )
            .outerjoin(x, x.c.ExternalExecutionID == bindparam("p_task_key"))
            .outerjoin(
                a,
                and_(
                    a.c.PackageID == tp.c.PackageID,
                    a.c.ItemFingerprint == bindparam("p_item"),
                    a.c.ExecutionStatus.in_(_ACTIVE),
                    a.c.ExternalExecutionID != bindparam("p_task_key"),
                ),
            )
            .outerjoin(p, p.c.ExecutionID == prior_id)
            .outerjoin(lc, lc.c.CheckpointID == landed_id)
            .outerjoin(lw, lw.c.ExecutionID == lc.c.ExecutionID)
        )
        query = (
            select(*cols)
            .select_from(frm)
            .where(b.c.ExternalExecutionID == bindparam("p_batch_key"))
        )
        return self._lock(query, b)

    @staticmethod
    def _task_facts_params(spec: TaskSpec) -> dict[str, Any]:
        return {
            "p_item": spec.item_fingerprint,
            "p_dag": spec.batch.dag_id,
            "p_task": spec.task_id,
            "p_task_key": spec.external_id,
            "p_batch_key": spec.batch.external_id,
        }

    def start_task(self, spec: TaskSpec) -> TaskStarted:
        """The gate: decide whether this try of the task runs, restarts compute only, or skips."""
        keys.check_airflow_ids(
            self.dialect, dag_id=spec.batch.dag_id, run_id=spec.batch.run_id, task_id=spec.task_id
        )
        started = self._transact(lambda conn: self._start_task(conn, spec), "task start")
        _log_lines(started.log_lines)
        return started

    def _start_task(self, conn: Connection, spec: TaskSpec) -> TaskStarted:
        now = self.clock()
        lines: list[str] = []
        params = self._task_facts_params(spec)
        rows = conn.execute(self._task_facts, params).all()
        if not rows:
            lines += self._start_batch(conn, spec.batch, now)
            rows = conn.execute(self._task_facts, params).all()
        first = rows[0]
        f = first._mapping
        batch_id = int(f["b_id"])
        where_b = f"{self.s.qualified(self.s.Execution)} row ExecutionID={batch_id}"
        batch_status = parse_status(f["b_status"], row=where_b)

        if f["x_id"] is not None:
            return self._repeat(conn, int(f["x_id"]), batch_id, lines, spec, now)

        reopen = machine.batch_reopen(
            batch_status, bool(f["b_enabled"]), closed=f["b_end"] is not None
        )
        if reopen is not None:
            E = self.s.Execution
            conn.execute(
                update(E)
                .where(E.c.ExecutionID == batch_id)
                .values(
                    ExecutionStatus=reopen.status.value,
                    NextLoadStatus=reopen.next_load_status.value,
                    EndTime=None,
                    UpdatedAt=now,
                )
            )
            batch_status = reopen.status

        package_id = f["tp_id"]
        package_enabled = bool(f["tp_enabled"]) if package_id is not None else True
        if package_id is None:
            package_id = self._ensure_package(
                conn, spec.batch.dag_id, spec.task_id, parent_id=f["b_package"]
            ).PackageID
        lineage_id = int(f["b_lineage"])

        # One process-table lookup per owner (DESIGN.md §5: a dead owner's lease is not live).
        dead = {r.a_owner: owner_known_dead(r.a_owner) for r in rows if r.a_id is not None}
        active = tuple(
            machine.ActiveExecution(
                execution_id=int(r.a_id),
                lease_owner=r.a_owner,
                lease_expires_at=r.a_expires,
                lease_live=not dead[r.a_owner] and lease_live(r.a_owner, r.a_expires, now),
                owner_dead=dead[r.a_owner],
                has_copy_checkpoint=bool(r.a_copy),
                in_this_lineage=r.a_lineage == lineage_id,
                audit_id=r.a_audit,
                original_execution_id=r.a_original,
                attempt_number=int(r.a_attempt or 1),
                operator_fingerprint=r.a_opfp,
            )
            for r in rows
            if r.a_id is not None
        )
        prior = None
        if f["p_id"] is not None:
            where_p = f"{self.s.qualified(self.s.Execution)} row ExecutionID={f['p_id']}"
            prior = machine.PriorExecution(
                execution_id=int(f["p_id"]),
                status=parse_status(f["p_status"], row=where_p),
                next_load_status=parse_next_load_status(f["p_nls"], row=where_p),
                audit_id=f["p_audit"],
                original_execution_id=f["p_original"],
                attempt_number=int(f["p_attempt"] or 1),
                operator_fingerprint=f["p_opfp"],
            )
        decision = machine.task_start(
            machine.TaskStartFacts(
                batch_skips_all=batch_status is ExecutionStatus.SKIPPED,
                package_enabled=package_enabled,
                active=active,
                prior=prior,
                operator_fingerprint=spec.operator_fingerprint,
                policy=spec.policy,
                decides_shape=spec.decides_shape,
                landed=None
                if f["l_writer"] is None
                else machine.LandedCopy(int(f["l_writer"]), f["l_audit"], f["l_opfp"]),
            ),
            now,
        )
        ctx = dict(dag=spec.batch.dag_id, task=spec.task_id, batch_execution_id=batch_id)
        if spec.map_index != keys.UNMAPPED:
            ctx["map_index"] = spec.map_index  # type: ignore[assignment]
        E = self.s.Execution
        for abort in decision.aborts:
            conn.execute(
                update(E)
                .where(E.c.ExecutionID == abort.execution_id, E.c.ExecutionStatus.in_(_ACTIVE))
                .values(
                    ExecutionStatus=ExecutionStatus.ABORTED.value,
                    NextLoadStatus=abort.next_load_status.value,
                    EndTime=now,
                    UpdatedAt=now,
                )
            )
            lines.append(_line(abort.emit, **ctx))

        start = decision.start
        prior = decision.prior
        # OriginalExecutionID: the first execution of this task and item in the lineage,
        # whatever became of it (refused starts included); none yet means this one.
        lineage_first = None if f["first_id"] is None else int(f["first_id"])
        scope = keys.scope_key(lineage_id, int(package_id), spec.item_fingerprint)
        if start.discard_checkpoints:
            C = self.s.ExecutionCheckpoint
            conn.execute(delete(C).where(C.c.ScopeKey == scope))
        running = start.run is Run.RUN
        next_id = None if f["next_id"] is None else int(f["next_id"])
        new_id = self._insert_execution(
            conn,
            next_id,
            dict(
                ParentExecutionID=batch_id,
                OriginalExecutionID=lineage_first if lineage_first is not None else SELF,
                LineageID=lineage_id,
                AuditID=decision.reused_audit_id if start.audit_from_prior else SELF,
                ExternalExecutionID=spec.external_id,
                PackageID=package_id,
                ExecutionStatus=start.status.value,
                NextLoadStatus=start.next_load_status.value,
                AttemptNumber=prior.attempt_number + 1 if prior else 1,
                # A row that ran records its own definition; a skip records the definition that
                # wrote the state it stands for, so a later attempt still compares against it.
                OperatorFingerprint=decision.reused_fingerprint
                if start.run is Run.SKIP and decision.reused_fingerprint
                else spec.operator_fingerprint,
                ItemFingerprint=spec.item_fingerprint,
                LeaseOwner=(spec.lease_owner or default_lease_owner()) if running else None,
                LeaseExpiresAt=now + timedelta(seconds=spec.lease_seconds) if running else None,
                StartTime=now,
                EndTime=None if running else now,
                DagId=spec.batch.dag_id,
                RunId=spec.batch.run_id,
                TaskId=spec.task_id,
                MapIndex=spec.map_index,
                TryNumber=spec.try_number,
                LogicalDate=spec.batch.logical_date,
                UpdatedAt=now,
            ),
        )
        for emit in start.emits:
            lines.append(_line(emit, **ctx, execution_id=new_id))
        original = lineage_first if lineage_first is not None else new_id
        audit = decision.reused_audit_id if start.audit_from_prior else new_id
        return TaskStarted(
            execution_id=new_id,
            batch_execution_id=batch_id,
            original_execution_id=original,
            lineage_id=lineage_id,
            package_id=int(package_id),
            status=start.status,
            next_load_status=start.next_load_status,
            audit_id=audit,
            attempt_number=prior.attempt_number + 1 if prior else 1,
            run=start.run,
            reason=start.reason,
            scope_key=scope,
            prior_execution_id=prior.execution_id if prior else None,
            failure_message=start.failure_message,
            log_lines=tuple(lines),
        )

    def _repeat(
        self,
        conn: Connection,
        execution_id: int,
        batch_id: int,
        lines: list[str],
        spec: TaskSpec,
        now: datetime,
    ) -> TaskStarted:
        """The same try started again: return its row, decide nothing anew.

        Airflow starts one try in a new process when a deferred try resumes in a worker, a
        sensor in reschedule mode pokes again, or a start is re-sent. An active row's lease
        passes to this process (from the parked owner ``airflow:<state>``, or the process that
        deferred), so that its renewals and the liveness rule see the process now running it.
        """
        E = self.s.Execution
        if spec.lease_owner is not None:
            conn.execute(
                update(E)
                .where(E.c.ExecutionID == execution_id, E.c.ExecutionStatus.in_(_ACTIVE))
                .values(
                    LeaseOwner=spec.lease_owner,
                    LeaseExpiresAt=now + timedelta(seconds=spec.lease_seconds),
                    UpdatedAt=now,
                )
            )
        row = conn.execute(select(E).where(E.c.ExecutionID == execution_id)).one()
        where = f"{self.s.qualified(E)} row ExecutionID={execution_id}"
        status = parse_status(row.ExecutionStatus, row=where)
        run = (
            Run.RUN
            if status.is_active
            else (Run.SKIP if status is ExecutionStatus.SKIPPED else Run.REFUSE)
        )
        return TaskStarted(
            execution_id=execution_id,
            batch_execution_id=batch_id,
            original_execution_id=row.OriginalExecutionID or execution_id,
            lineage_id=row.LineageID,
            package_id=row.PackageID,
            status=status,
            next_load_status=parse_next_load_status(row.NextLoadStatus, row=where),
            audit_id=row.AuditID,
            attempt_number=row.AttemptNumber,
            run=run,
            reason="this try was already started",
            scope_key=keys.scope_key(row.LineageID, row.PackageID, row.ItemFingerprint),
            failure_message=None
            if run is not Run.REFUSE
            else f"execution {execution_id} of this try already ended as {status.value}",
            log_lines=tuple(lines),
            repeated=True,
        )

    # -- task end -----------------------------------------------------------------------------

    @functools.cached_property
    def _task_end_facts(self) -> Select[Any]:
        """The task-end facts query (built once per store; parameter ``p_execution_id``)."""
        E = self.s.Execution
        t, b = E.alias("t"), E.alias("b")
        copy_landed = self._copy_landed(t)
        return self._lock(
            select(
                t.c.ExecutionStatus.label("t_status"),
                t.c.NextLoadStatus.label("t_nls"),
                b.c.ExecutionID.label("b_id"),
                b.c.ExecutionStatus.label("b_status"),
                b.c.LineageID.label("b_lineage"),
                _flag(copy_landed).label("copy_landed"),
            )
            .select_from(t.join(b, b.c.ExecutionID == t.c.ParentExecutionID))
            .where(t.c.ExecutionID == bindparam("p_execution_id")),
            b,
        )

    def end_task(
        self,
        execution_id: int,
        outcome: TaskOutcome,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        error_detail: str | None = None,
    ) -> TaskEnded:
        """Record how one try ended (idempotent: a second call for an ended row changes nothing)."""

        def work(conn: Connection) -> TaskEnded:
            now = self.clock()
            E = self.s.Execution
            row = conn.execute(self._task_end_facts, {"p_execution_id": execution_id}).first()
            if row is None:
                raise CatalogStateError(
                    f"cannot end execution {execution_id}: no such task execution in"
                    f" {self.s.qualified(E)}"
                )
            where = f"{self.s.qualified(E)} row ExecutionID={execution_id}"
            current = parse_status(row.t_status, row=where)
            batch_status = parse_status(
                row.b_status, row=f"{self.s.qualified(E)} row ExecutionID={row.b_id}"
            )
            end = machine.task_end(
                machine.TaskEndFacts(
                    outcome=outcome,
                    current_status=current,
                    batch_status=batch_status,
                    has_copy_checkpoint=bool(row.copy_landed),
                )
            )
            if end is None:
                return TaskEnded(
                    execution_id,
                    current,
                    parse_next_load_status(row.t_nls, row=where),
                    changed=False,
                )
            conn.execute(
                update(E)
                .where(E.c.ExecutionID == execution_id)
                .values(
                    ExecutionStatus=end.status.value,
                    NextLoadStatus=end.next_load_status.value,
                    EndTime=now,
                    LeaseExpiresAt=None,
                    UpdatedAt=now,
                )
            )
            if end.record_error:
                Err = self.s.ExecutionError
                conn.execute(
                    insert(Err).values(
                        ExecutionID=execution_id,
                        ErrorType=(error_type or "")[:255] or None,
                        ErrorMessage=error_message,
                        ErrorDetail=error_detail,
                        CreatedAt=now,
                    )
                )
            if end.fail_batch:
                self._apply_batch_end(
                    conn, int(row.b_id), int(row.b_lineage), False, now, close=False
                )
            return TaskEnded(execution_id, end.status, end.next_load_status, True, end.fail_batch)

        return self._transact(work, "task end")

    # -- batch end ----------------------------------------------------------------------------

    def _apply_batch_end(
        self,
        conn: Connection,
        batch_id: int,
        lineage_id: int,
        succeeded: bool,
        now: datetime,
        *,
        close: bool,
    ) -> machine.BatchEnd:
        """Write a batch end. ``close`` (the DAG run is over: listener, reconciliation) sets
        EndTime; a task's final failure fails the batch without closing it, so siblings that
        start later in the same DAG run see the failure instead of reopening the batch."""
        E = self.s.Execution
        end = machine.batch_end(succeeded)
        conn.execute(
            update(E)
            .where(E.c.ExecutionID == batch_id)
            .values(
                ExecutionStatus=end.status.value,
                NextLoadStatus=end.next_load_status.value,
                EndTime=func.coalesce(E.c.EndTime, now) if close else E.c.EndTime,
                UpdatedAt=now,
            )
        )
        if end.stamp_completed:
            conn.execute(
                update(E)
                .where(
                    E.c.ParentExecutionID == batch_id,
                    E.c.ExecutionStatus == ExecutionStatus.SUCCEEDED.value,
                    E.c.NextLoadStatus != NextLoadStatus.SKIP.value,
                )
                .values(NextLoadStatus=NextLoadStatus.SKIP.value, UpdatedAt=now)
            )
        if end.reset_lineage:
            conn.execute(
                update(E)
                .where(
                    E.c.LineageID == lineage_id,
                    E.c.NextLoadStatus != NextLoadStatus.PENDING.value,
                    E.c.ExecutionStatus.in_(_TERMINAL),  # an active row carries C (DESIGN §4)
                )
                .values(NextLoadStatus=NextLoadStatus.PENDING.value, UpdatedAt=now)
            )
        return end

    def end_batch(self, dag_id: str, run_id: str, *, succeeded: bool) -> BatchEnded | None:
        """Close the batch of a DAG run (listener, task side or reconciliation: same rows).

        Returns None when the run never had a routed task (no batch row)."""
        external = keys.batch_external_id(dag_id, run_id)

        def work(conn: Connection) -> BatchEnded | None:
            E = self.s.Execution
            row = conn.execute(
                self._lock(select(E).where(E.c.ExternalExecutionID == external), E)
            ).first()
            if row is None:
                return None
            where = f"{self.s.qualified(E)} row ExecutionID={row.ExecutionID}"
            status = parse_status(row.ExecutionStatus, row=where)
            if status is ExecutionStatus.SKIPPED:
                return BatchEnded(
                    row.ExecutionID,
                    status,
                    parse_next_load_status(row.NextLoadStatus, row=where),
                    False,
                )
            end = self._apply_batch_end(
                conn, row.ExecutionID, row.LineageID, succeeded, self.clock(), close=True
            )
            return BatchEnded(
                row.ExecutionID,
                end.status,
                end.next_load_status,
                changed=status is not end.status or row.EndTime is None,
            )

        return self._transact(work, "batch end")

    # -- Airflow's outcome is evidence --------------------------------------------------------

    def runs_awaiting_evidence(
        self, dag_id: str, run_id: str, *, limit: int = 5
    ) -> list[RunAwaitingEvidence]:
        """The batches of ``dag_id``'s latest lineage (other than ``run_id``, newest first, at
        most ``limit``) whose rows Airflow may contradict. A batch that closed cleanly
        (succeeded, closed, no active task row) is listed with ``settled=True`` and no task ids:
        only a DAG run marked failed by hand afterwards can contradict it, which one cheap
        question to Airflow settles. Nothing is listed for a DAG without batches."""
        E = self.s.Execution
        t = E.alias("t")
        active_child = exists().where(
            t.c.ParentExecutionID == E.c.ExecutionID, t.c.ExecutionStatus.in_(_ACTIVE)
        )
        query = (
            select(
                E.c.ExecutionID,
                E.c.RunId,
                E.c.LineageID,
                E.c.ExecutionStatus,
                E.c.EndTime,
                _flag(active_child).label("has_active"),
            )
            .where(E.c.DagId == dag_id, E.c.TaskId.is_(None), E.c.RunId != run_id)
            .order_by(E.c.ExecutionID.desc())
            .limit(limit)
        )

        def work(conn: Connection) -> list[RunAwaitingEvidence]:
            rows = conn.execute(query).all()
            out: list[RunAwaitingEvidence] = []
            for r in rows:
                if r.LineageID != rows[0].LineageID:
                    break
                settled = (
                    r.ExecutionStatus == ExecutionStatus.SUCCEEDED.value
                    and r.EndTime is not None
                    and not r.has_active
                )
                if settled and out:
                    continue  # an older clean batch of the lineage: superseded by the newer
                out.append(
                    RunAwaitingEvidence(
                        str(r.RunId), int(r.ExecutionID), settled, self._task_ids(conn, r)
                    )
                )
            return out

        return self._transact(work, "read")

    def task_ids_of_batch(self, batch_execution_id: int) -> tuple[str, ...]:
        """The task ids with rows under one batch execution."""
        return self._transact(
            lambda conn: self._task_ids(conn, batch_execution_id, force=True), "read"
        )

    def _task_ids(self, conn: Connection, row: Any, *, force: bool = False) -> tuple[str, ...]:
        E = self.s.Execution
        batch_id = row if force else row.ExecutionID
        if (
            not force
            and row.ExecutionStatus == ExecutionStatus.SUCCEEDED.value
            and (row.EndTime is not None and not row.has_active)
        ):
            return ()
        ids = conn.execute(
            select(E.c.TaskId)
            .where(E.c.ParentExecutionID == batch_id, E.c.TaskId.is_not(None))
            .distinct()
        ).scalars()
        return tuple(sorted(str(x) for x in ids))

    def adopt_airflow_states(self, dag_id: str, runs: Sequence[RunEvidence]) -> list[str]:
        """Bring the rows of these DAG runs in line with Airflow's record of them
        (:mod:`.evidence`): the latest try row of each task instance first, then the batch.
        Idempotent; returns the ``BFX_ADOPTED_AIRFLOW_STATE`` lines it logged."""
        lines: list[str] = []
        for run in runs:

            def work(conn: Connection, run: RunEvidence = run) -> list[str]:
                return self._adopt_run(conn, dag_id, run)

            lines += self._transact(work, "adoption")
        _log_lines(lines)
        return lines

    def _adopt_run(self, conn: Connection, dag_id: str, run: RunEvidence) -> list[str]:
        E = self.s.Execution
        now = self.clock()
        batch = conn.execute(
            self._lock(
                select(E).where(
                    E.c.ExternalExecutionID == keys.batch_external_id(dag_id, run.run_id)
                ),
                E,
            )
        ).first()
        if batch is None:
            return []
        where_b = f"{self.s.qualified(E)} row ExecutionID={batch.ExecutionID}"
        batch_status = parse_status(batch.ExecutionStatus, row=where_b)
        t = E.alias("t")
        later = E.alias("later")
        newer = exists().where(
            later.c.ParentExecutionID == t.c.ParentExecutionID,
            later.c.TaskId == t.c.TaskId,
            later.c.MapIndex == t.c.MapIndex,
            later.c.ExecutionID > t.c.ExecutionID,
        )
        rows = conn.execute(
            select(
                t.c.ExecutionID,
                t.c.TaskId,
                t.c.MapIndex,
                t.c.ExecutionStatus,
                _flag(self._copy_landed(t)).label("copy_landed"),
            ).where(t.c.ParentExecutionID == batch.ExecutionID, t.c.TaskId.is_not(None), ~newer)
        ).all()
        lines: list[str] = []
        batch_failed = (
            batch_status is ExecutionStatus.FAILED or run.dag_run_state == evidence.RUN_FAILED
        )
        Err = self.s.ExecutionError
        for r in rows:
            slot = (str(r.TaskId), int(r.MapIndex))
            if slot not in run.task_states:
                continue
            where = f"{self.s.qualified(E)} row ExecutionID={r.ExecutionID}"
            current = parse_status(r.ExecutionStatus, row=where)
            adoption = evidence.adopt_task(
                current,
                run.task_states[slot],
                batch_failed=batch_failed,
                copy_landed=bool(r.copy_landed),
            )
            if adoption is None:
                continue
            changed = conn.execute(
                update(E)
                .where(E.c.ExecutionID == r.ExecutionID, E.c.ExecutionStatus == current.value)
                .values(
                    ExecutionStatus=adoption.status.value,
                    NextLoadStatus=adoption.next_load_status.value,
                    EndTime=func.coalesce(E.c.EndTime, now),
                    LeaseExpiresAt=None,
                    UpdatedAt=now,
                )
            ).rowcount
            if not changed:
                continue
            conn.execute(
                insert(Err).values(
                    ExecutionID=r.ExecutionID,
                    ErrorType=Token.ADOPTED_AIRFLOW_STATE.value,
                    ErrorMessage=adoption.reason,
                    ErrorDetail=None,
                    CreatedAt=now,
                )
            )
            lines.append(
                format_token(
                    Token.ADOPTED_AIRFLOW_STATE,
                    dag=dag_id,
                    run_id=run.run_id,
                    task=r.TaskId,
                    map_index=None if int(r.MapIndex) == keys.UNMAPPED else int(r.MapIndex),
                    execution_id=r.ExecutionID,
                    airflow_state=adoption.airflow_state,
                    was=current.value,
                    status=adoption.status.value,
                    next_load_status=adoption.next_load_status.value,
                )
            )
        ended = evidence.adopt_batch(
            batch_status, run.dag_run_state, closed=batch.EndTime is not None
        )
        if ended is not None:
            end = self._apply_batch_end(
                conn, int(batch.ExecutionID), int(batch.LineageID), ended, now, close=True
            )
            if end.status is not batch_status:
                lines.append(
                    format_token(
                        Token.ADOPTED_AIRFLOW_STATE,
                        dag=dag_id,
                        run_id=run.run_id,
                        batch_execution_id=batch.ExecutionID,
                        airflow_state=run.dag_run_state,
                        was=batch_status.value,
                        status=end.status.value,
                        next_load_status=end.next_load_status.value,
                    )
                )
        return lines

    # -- leases -------------------------------------------------------------------------------

    def renew_lease(self, execution_id: int, owner: str, seconds: float) -> bool:
        """Extend an active execution's lease; False when the row is no longer active or owned."""

        def work(conn: Connection) -> bool:
            E = self.s.Execution
            now = self.clock()
            result = conn.execute(
                update(E)
                .where(
                    E.c.ExecutionID == execution_id,
                    E.c.ExecutionStatus.in_(_ACTIVE),
                    E.c.LeaseOwner == owner,
                )
                .values(LeaseExpiresAt=now + timedelta(seconds=seconds), UpdatedAt=now)
            )
            return bool(result.rowcount)

        return self._transact(work, "lease renewal")

    def park(self, execution_id: int, owner: str, airflow_state: str) -> bool:
        """Hand an active execution's lease to Airflow: its try is parked outside any process
        (``deferred``, ``up_for_reschedule``, ``awaiting_input``) and its process is ending.

        ``LeaseOwner`` becomes ``airflow:<state>`` and ``LeaseExpiresAt`` NULL: the lease stays
        live with no process to renew it, so neither the expiry scan nor a dead-owner check
        aborts the try (decision 0082). Only a row still held by ``owner`` is changed; False
        when it was not (ended, reset, or taken over meanwhile)."""

        def work(conn: Connection) -> bool:
            E = self.s.Execution
            result = conn.execute(
                update(E)
                .where(
                    E.c.ExecutionID == execution_id,
                    E.c.ExecutionStatus.in_(_ACTIVE),
                    E.c.LeaseOwner == owner,
                )
                .values(
                    LeaseOwner=parked_owner(airflow_state),
                    LeaseExpiresAt=None,
                    UpdatedAt=self.clock(),
                )
            )
            return bool(result.rowcount)

        return self._transact(work, "lease hand-over to Airflow")

    def _expire(self, conn: Connection, now: datetime) -> list[ExpiredLease]:
        """Close every active task execution whose lease lapsed (see :meth:`expire_leases`).

        A row whose batch already ended successfully gets NextLoadStatus P: its lineage is
        closed, nothing waits for it."""
        E = self.s.Execution
        a, parent = E.alias("a"), E.alias("parent")
        copy_landed = self._copy_landed(a)
        rows = conn.execute(
            select(
                a,
                _flag(copy_landed).label("copy_landed"),
                select(parent.c.ExecutionStatus)
                .where(parent.c.ExecutionID == a.c.ParentExecutionID)
                .scalar_subquery()
                .label("batch_status"),
            ).where(
                a.c.ExecutionStatus.in_(_ACTIVE),
                a.c.TaskId.is_not(None),
                # Lapsed, or held by a process of this host, which may be known dead.
                or_(a.c.LeaseExpiresAt <= now, a.c.LeaseOwner.startswith(f"{this_host()}:")),
            )
        ).all()
        out: list[ExpiredLease] = []
        for r in rows:
            lapsed = r.LeaseExpiresAt is not None and r.LeaseExpiresAt <= now
            if not lapsed and not owner_known_dead(r.LeaseOwner):
                continue
            abort = machine.expire(
                machine.ActiveExecution(
                    execution_id=r.ExecutionID,
                    lease_owner=r.LeaseOwner,
                    lease_expires_at=r.LeaseExpiresAt,
                    lease_live=False,
                    owner_dead=not lapsed,
                    has_copy_checkpoint=bool(r.copy_landed),
                    in_this_lineage=True,
                    audit_id=r.AuditID,
                    original_execution_id=r.OriginalExecutionID,
                    attempt_number=r.AttemptNumber,
                    operator_fingerprint=r.OperatorFingerprint,
                    batch_succeeded=r.batch_status == ExecutionStatus.SUCCEEDED.value,
                ),
                now,
            )
            changed = conn.execute(
                update(E)
                .where(
                    E.c.ExecutionID == r.ExecutionID,
                    E.c.ExecutionStatus.in_(_ACTIVE),
                    # Not renewed (nor taken over) since it was read.
                    E.c.LeaseOwner == r.LeaseOwner,
                    E.c.LeaseExpiresAt == r.LeaseExpiresAt,
                )
                .values(
                    ExecutionStatus=ExecutionStatus.ABORTED.value,
                    NextLoadStatus=abort.next_load_status.value,
                    EndTime=now,
                    UpdatedAt=now,
                )
            ).rowcount
            if changed:
                line = _line(
                    abort.emit,
                    dag=r.DagId,
                    task=r.TaskId,
                    batch_execution_id=r.ParentExecutionID,
                )
                out.append(ExpiredLease(r.ExecutionID, abort.next_load_status, line))
        return out

    def expire_leases(self) -> list[ExpiredLease]:
        """The expiry scan: active executions whose lease lapsed become A (NextLoadStatus D if
        their copy step landed, else R), each logged ``BFX_LEASE_EXPIRED``."""
        expired = self._transact(lambda conn: self._expire(conn, self.clock()), "expiry scan")
        _log_lines([e.log_line for e in expired])
        return expired

    # -- checkpoints and row counts -------------------------------------------------------------

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
        text = None if payload is UNRECORDED else encode_payload(payload, node=node)

        def work(conn: Connection) -> None:
            C = self.s.ExecutionCheckpoint
            key = and_(
                C.c.ScopeKey == scope_key,
                C.c.CheckpointType == checkpoint_type.value,
                C.c.NodeKey == node,
                C.c.IterationKey == iteration_key,
            )
            values = dict(
                ExecutionID=execution_id,
                ItemFingerprint=item_fingerprint,
                OperatorFingerprint=operator_fingerprint,
                Payload=text,
                CreatedAt=self.clock(),
            )
            if conn.execute(update(C).where(key).values(**values)).rowcount:
                return
            conn.execute(
                insert(C).values(
                    ScopeKey=scope_key,
                    CheckpointType=checkpoint_type.value,
                    NodeKey=node,
                    IterationKey=iteration_key,
                    **values,
                )
            )

        self._transact(work, "checkpoint write")

    def read_checkpoints(
        self, scope_key: str, checkpoint_type: CheckpointType, node: str | None = None
    ) -> list[Checkpoint]:
        C = self.s.ExecutionCheckpoint
        query = select(C).where(
            C.c.ScopeKey == scope_key, C.c.CheckpointType == checkpoint_type.value
        )
        if node is not None:
            query = query.where(C.c.NodeKey == node)

        def work(conn: Connection) -> list[Checkpoint]:
            return [
                Checkpoint(
                    execution_id=r.ExecutionID,
                    node=r.NodeKey,
                    iteration_key=r.IterationKey,
                    item_fingerprint=r.ItemFingerprint,
                    operator_fingerprint=r.OperatorFingerprint,
                    payload=decode_payload(r.Payload),
                )
                for r in conn.execute(query.order_by(C.c.CheckpointID))
            ]

        return self._transact(work, "checkpoint read")

    def read_foreach_progress(self, scope_key: str, node: str) -> dict[int, tuple[str, str | None]]:
        """``{iteration index: (item fingerprint, operator fingerprint)}`` of one foreach loop.

        Only the two fingerprint columns, never the payloads: a resume decision over 10,000
        items reads 10,000 short rows through the unique index on the scope."""
        C = self.s.ExecutionCheckpoint
        query = select(C.c.IterationKey, C.c.ItemFingerprint, C.c.OperatorFingerprint).where(
            C.c.ScopeKey == scope_key,
            C.c.CheckpointType == CheckpointType.FOREACH_PROGRESS.value,
            C.c.NodeKey == node,
        )

        def work(conn: Connection) -> dict[int, tuple[str, str | None]]:
            found: dict[int, tuple[str, str | None]] = {}
            for iteration, item_fp, operator_fp in conn.execute(query):
                try:
                    index = int(iteration)
                except ValueError:
                    raise CorruptRowError(
                        f"ExecutionCheckpoint (ScopeKey={scope_key!r}, NodeKey={node!r}) has "
                        f"IterationKey={iteration!r}, which is not an iteration index. Delete "
                        "the row, or run `bfx reset DAG_ID --task TASK_ID` to start fresh."
                    ) from None
                found[index] = (item_fp or "", operator_fp)
            return found

        return self._transact(work, "foreach progress read")

    def log_row_counts(self, execution_id: int, counts: Iterable[tuple[str, str, int]]) -> None:
        """Append row counts (never overwritten: a second count is a second row)."""
        rows = [
            dict(
                ExecutionID=execution_id,
                ObjectName=o,
                CountType=t,
                RecordCount=int(n),
                CreatedAt=self.clock(),
            )
            for o, t, n in counts
        ]
        if not rows:
            return
        R = self.s.ExecutionRowCount
        self._transact(lambda conn: conn.execute(insert(R), rows) and None, "row count")

    # -- packages (operations) ------------------------------------------------------------------

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

        def work(conn: Connection) -> None:
            P = self.s.Package
            parent_id = None
            if task_id is not None:
                parent_id = self._ensure_package(conn, dag_id, None, parent_id=None).PackageID
            pkg = self._ensure_package(conn, dag_id, task_id, parent_id=parent_id)
            values: dict[str, Any] = {"UpdatedAt": self.clock()}
            if enabled is not None:
                values["IsEnabled"] = 1 if enabled else 0
            if retry_limit is not None:
                values["RetryLimit"] = retry_limit
            if max_resume_age is not _Unset:
                values["MaxResumeAge"] = max_resume_age
            conn.execute(update(P).where(P.c.PackageID == pkg.PackageID).values(**values))

        self._transact(work, "package update")

    def find_execution(self, external_id: str) -> Any | None:
        """The row of one Airflow object by its ``ExternalExecutionID`` (read-only), or None:
        callbacks in another process find the try the gate started without deciding again."""
        E = self.s.Execution
        query = select(E).where(E.c.ExternalExecutionID == external_id)
        return self._transact(lambda conn: conn.execute(query).first(), "read")

    def executions(self, dag_id: str, run_id: str | None = None) -> Sequence[Any]:
        """Rows of a DAG (optionally one run), oldest first: for ``bfx history`` and the demo."""
        E = self.s.Execution
        query = select(E).where(E.c.DagId == dag_id)
        if run_id is not None:
            query = query.where(E.c.RunId == run_id)
        return self._transact(
            lambda conn: conn.execute(query.order_by(E.c.ExecutionID)).all(), "read"
        )


def decides(row: Any) -> ColumnElement[bool]:
    """Whether execution ``row`` (an ``Execution`` table or alias) may decide the next start of
    its task and item in its lineage; the latest such row does. The one home of this rule: the
    task start's facts query, ``bfx plan`` and ``bfx reset`` all use it.

    An active row decides nothing (it is running, or its lease decides). A start that never ran
    and carries no instruction (refused A/P, disabled C/P, a skip row whose C was reset when its
    lineage closed) decides nothing either: the instruction before it stands
    (docs/decisions/0008). Every other row decides, *including one whose status is not a known
    code* (a hand edit with the CHECK constraint dropped): reading it names the row
    (``CorruptRowError``) instead of passing over it and running the task again.
    """
    return and_(
        row.c.ExecutionStatus.not_in(_ACTIVE),
        or_(row.c.LeaseOwner.is_not(None), row.c.NextLoadStatus != NextLoadStatus.PENDING.value),
    )


def _flag(condition: Any) -> Any:
    """A predicate as a 0/1 column: T-SQL does not allow ``EXISTS (...)`` in a select list."""
    return case((condition, 1), else_=0)


def _line(emit: machine.Emit, **context: object) -> str:
    return format_token(emit.token, **{**context, **dict(emit.context)})


def _nested_line(**context: object) -> str:
    """``[bfx] nested batch key=value ...``: not one of the contract's tokens (a nested batch's
    resume is also ``BFX_BATCH_RESUME ... parent_execution_id=``), see docs/decisions/0070."""
    line = format_token("bfx", **context)
    return "[bfx] nested batch" + line[len("[bfx]") :]


def _log_lines(lines: Iterable[str]) -> None:
    for line in lines:
        log.info("%s", line)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
