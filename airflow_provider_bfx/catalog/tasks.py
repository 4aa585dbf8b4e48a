"""Task start and task end: one try's row, read → decided → written. No Airflow here.

A task start is three steps in one transaction, each a function below:

1. **facts** (:func:`_gather_txn`): one locking SELECT on the batch row (:mod:`.facts`) gathers
   everything the decision needs; on a DAG run's first task the batch is started first;
2. **machine**: :func:`.machine.task_start` decides (pure, no I/O);
3. **write** (:func:`_write_start_txn`): stale rows aborted, checkpoints discarded if asked,
   the new row inserted.

Every transition locks the batch row first, so concurrent tasks of one batch serialise on it: a
task ending successfully can never miss the batch's failure stamping, and a final failure can
never miss a sibling's success.

A task end whose decision the state machine can tell without the facts (a success, a skip:
:func:`.machine.task_end_guard`) is first one guarded UPDATE (:func:`end_task_guarded_txn`):
it writes that decision only while the row and its batch row (locked by the same statement)
still have the statuses the machine gave it for; otherwise nothing is written and the end is
read, decided and written as above (decision 0120). A task's first start in its lineage is
likewise first one guarded INSERT (:mod:`.guarded_start`, decision 0121), which writes the row
:func:`start_row` gives for the machine's answer, and returns what :func:`started` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.sql.dml import Update

from airflow_provider_bfx.catalog import keys, machine
from airflow_provider_bfx.catalog.batches import apply_batch_end_txn, create_batch_txn
from airflow_provider_bfx.catalog.codes import (
    ExecutionStatus,
    parse_next_load_status,
    parse_status,
)
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.facts import task_end_facts, task_facts, task_facts_params
from airflow_provider_bfx.catalog.liveness import lease_live, owner_known_dead
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.packages import package_facts, register_package_txn
from airflow_provider_bfx.catalog.pipeline import prepared
from airflow_provider_bfx.catalog.results import (
    TaskEnded,
    TaskSpec,
    TaskStarted,
    default_lease_owner,
)
from airflow_provider_bfx.catalog.rows import (
    ACTIVE,
    SELF,
    execution_insert,
    insert_execution_txn,
    one_of,
    token_line,
)
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.exceptions import CatalogStateError


@dataclass(frozen=True)
class _Gathered:
    """What a task start read (and settled: the batch reopened, the package registered)."""

    batch_id: int
    lineage_id: int
    package_id: int
    lineage_first: int | None  # the first execution of this task and item in the lineage
    next_id: int | None  # the new row's ExecutionID, when the engine knows it before the INSERT
    facts: machine.TaskStartFacts


def start_task_txn(cat: Catalog, conn: Connection, spec: TaskSpec) -> TaskStarted:
    """The gate's transition: whether this try runs, restarts compute only, or skips."""
    now = cat.clock()
    lines: list[str] = []
    params = task_facts_params(spec)
    facts = task_facts(cat)
    rows = facts.rows(conn, params)
    first = not rows
    if first:
        lines += create_batch_txn(cat, conn, spec.batch, now)
        rows = facts.rows(conn, params)
    f = rows[0]
    batch_id = int(f.b_id)
    batch_status = parse_status(f.b_status, row=cat.where(batch_id))
    if f.x_id is not None:
        return repeat_txn(cat, conn, int(f.x_id), batch_id, lines, spec, now)
    gathered = _gather_txn(cat, conn, spec, rows, batch_status, now)
    decision = machine.task_start(gathered.facts, now)
    if decision.start.run is Run.SKIP and f.ahead_id is not None:
        # Skip ahead wrote this task's row while Airflow scheduled it (decision 0106): decided
        # once, one row; this try stands for the row written ahead.
        return repeat_txn(cat, conn, int(f.ahead_id), batch_id, lines, spec, now)
    started = _write_start_txn(cat, conn, spec, gathered, decision, lines, now)
    if first and gathered.lineage_id != batch_id:
        # This start found its run without a batch, and the batch resumes an older lineage:
        # the start that may skip the run's completed tasks ahead (:mod:`.skip_ahead`).
        return replace(started, resumed_batch=True)
    return started


def decide_start_txn(
    cat: Catalog, conn: Connection, spec: TaskSpec, now: datetime
) -> tuple[_Gathered, machine.TaskStartDecision] | None:
    """What this try's own task start would decide, read under the batch row lock and not
    written: skip ahead (:mod:`.skip_ahead`) decides other tasks of the run with the same rule
    as their own gates. None when the run has no batch yet or the try already has a row.
    Settles what a start settles before deciding (a task package registered)."""
    rows = task_facts(cat).rows(conn, task_facts_params(spec))
    if not rows or rows[0].x_id is not None:
        return None
    f = rows[0]
    batch_status = parse_status(f.b_status, row=cat.where(int(f.b_id)))
    gathered = _gather_txn(cat, conn, spec, rows, batch_status, now)
    return gathered, machine.task_start(gathered.facts, now)


def write_start_txn(
    cat: Catalog,
    conn: Connection,
    spec: TaskSpec,
    decided: tuple[_Gathered, machine.TaskStartDecision],
    now: datetime,
) -> TaskStarted:
    """Write a decision of :func:`decide_start_txn` exactly as the task's own start would."""
    gathered, decision = decided
    return _write_start_txn(cat, conn, spec, gathered, decision, [], now)


def start_scope_key(spec: TaskSpec, decided: tuple[_Gathered, machine.TaskStartDecision]) -> str:
    """The checkpoint scope the decided start would have (lineage + package + item)."""
    gathered = decided[0]
    return keys.scope_key(gathered.lineage_id, gathered.package_id, spec.item_fingerprint)


def _gather_txn(
    cat: Catalog,
    conn: Connection,
    spec: TaskSpec,
    rows: Sequence[Any],
    batch_status: ExecutionStatus,
    now: datetime,
) -> _Gathered:
    """The facts of :func:`.machine.task_start` from the rows of the facts query. A closed
    batch a cleared task starts in again is reopened, and a task package seen for the first
    time registered, before the machine decides."""
    f = rows[0]
    batch_id = int(f.b_id)
    reopen = machine.batch_reopen(batch_status, bool(f.b_enabled), closed=f.b_end is not None)
    if reopen is not None:
        E = cat.s.Execution
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

    package_id = f.tp_id
    package_enabled = bool(f.tp_enabled) if package_id is not None else True
    if package_id is None:  # a task seen for the first time: registered (decision 0108)
        package_id = register_package_txn(
            cat, conn, package_facts(f), spec.batch.dag_id, spec.task_id, parent_id=f.b_package
        ).PackageID
    lineage_id = int(f.b_lineage)

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
    if f.p_id is not None:
        where_p = cat.where(f.p_id)
        prior = machine.PriorExecution(
            execution_id=int(f.p_id),
            status=parse_status(f.p_status, row=where_p),
            next_load_status=parse_next_load_status(f.p_nls, row=where_p),
            audit_id=f.p_audit,
            original_execution_id=f.p_original,
            attempt_number=int(f.p_attempt or 1),
            operator_fingerprint=f.p_opfp,
        )
    return _Gathered(
        batch_id=batch_id,
        lineage_id=lineage_id,
        package_id=int(package_id),
        lineage_first=None if f.first_id is None else int(f.first_id),
        next_id=None if f.next_id is None else int(f.next_id),
        facts=machine.TaskStartFacts(
            batch_skips_all=machine.batch_skips_all(batch_status),
            package_enabled=package_enabled,
            active=active,
            prior=prior,
            operator_fingerprint=spec.operator_fingerprint,
            policy=spec.policy,
            decides_shape=spec.decides_shape,
            landed=None
            if f.l_writer is None
            else machine.LandedCopy(int(f.l_writer), f.l_audit, f.l_opfp),
        ),
    )


def start_row_insert(cat: Catalog) -> CompiledStatement:
    """A task start's Execution INSERT: a task start writes every column of its row (the
    values of :func:`_write_start_txn`, with the ExecutionID), so the statement is the one of
    all the table's columns; :mod:`.warm` compiles it before the fork.
    ``tests/unit/catalog/test_compiled_shared.py`` checks that a task start after ``warm()``
    compiles nothing: a column with a default that the start stops writing, or a new one it
    does not write, fails there. A column without a default is written NULL when a row leaves
    it out (:func:`.rows.insert_execution_txn`, decision 0119), so leaving one out compiles
    nothing new and is not caught there."""
    return execution_insert(cat, (c.key for c in cat.s.Execution.c))


def start_row(
    spec: TaskSpec,
    decision: machine.TaskStartDecision,
    now: datetime,
    *,
    batch_id: Any,
    lineage_id: Any,
    package_id: Any,
    lineage_first: int | None,
) -> dict[str, Any]:
    """The Execution row a task start writes for ``decision``: the one home of its values, for
    the full path (:func:`_write_start_txn`) and the guarded one
    (:func:`.guarded_start.start_task_guarded_txn`,
    which reads the batch, lineage and package ids in its own statement). ``SELF`` marks a
    column that takes the new row's own ExecutionID."""
    start = decision.start
    prior = decision.prior
    running = start.run is Run.RUN
    return dict(
        ParentExecutionID=batch_id,
        # OriginalExecutionID: the first execution of this task and item in the lineage,
        # whatever became of it (refused starts included); none yet means this one.
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
    )


def _write_start_txn(
    cat: Catalog,
    conn: Connection,
    spec: TaskSpec,
    gathered: _Gathered,
    decision: machine.TaskStartDecision,
    lines: list[str],
    now: datetime,
) -> TaskStarted:
    """Write what the machine decided: the aborts, the discarded checkpoints, the new row."""
    batch_id, lineage_id = gathered.batch_id, gathered.lineage_id
    ctx = _context(spec, batch_id)
    E = cat.s.Execution
    for abort in decision.aborts:
        conn.execute(
            update(E)
            .where(E.c.ExecutionID == abort.execution_id, E.c.ExecutionStatus.in_(ACTIVE))
            .values(
                ExecutionStatus=ExecutionStatus.ABORTED.value,
                NextLoadStatus=abort.next_load_status.value,
                EndTime=now,
                UpdatedAt=now,
            )
        )
        lines.append(token_line(abort.emit, **ctx))

    lineage_first = gathered.lineage_first
    package_id = gathered.package_id
    if decision.start.discard_checkpoints:
        C = cat.s.ExecutionCheckpoint
        scope = keys.scope_key(lineage_id, package_id, spec.item_fingerprint)
        conn.execute(delete(C).where(C.c.ScopeKey == scope))
    new_id = insert_execution_txn(
        cat,
        conn,
        gathered.next_id,
        start_row(
            spec,
            decision,
            now,
            batch_id=batch_id,
            lineage_id=lineage_id,
            package_id=package_id,
            lineage_first=lineage_first,
        ),
    )
    return started(
        spec,
        decision,
        lines,
        new_id=new_id,
        batch_id=batch_id,
        lineage_id=lineage_id,
        package_id=package_id,
        lineage_first=lineage_first,
    )


def _context(spec: TaskSpec, batch_id: int) -> dict[str, object]:
    """The ``key=value`` context of a task start's token lines."""
    ctx: dict[str, object] = dict(
        dag=spec.batch.dag_id, task=spec.task_id, batch_execution_id=batch_id
    )
    if spec.map_index != keys.UNMAPPED:
        ctx["map_index"] = spec.map_index
    return ctx


def started(
    spec: TaskSpec,
    decision: machine.TaskStartDecision,
    lines: list[str],
    *,
    new_id: int,
    batch_id: int,
    lineage_id: int,
    package_id: int,
    lineage_first: int | None,
) -> TaskStarted:
    """What a start that wrote row ``new_id`` for ``decision`` returns (its token lines
    appended to ``lines``): the full path's and the guarded one's."""
    start = decision.start
    prior = decision.prior
    ctx = _context(spec, batch_id)
    for emit in start.emits:
        lines.append(token_line(emit, **ctx, execution_id=new_id))
    return TaskStarted(
        execution_id=new_id,
        batch_execution_id=batch_id,
        original_execution_id=lineage_first if lineage_first is not None else new_id,
        lineage_id=lineage_id,
        package_id=package_id,
        status=start.status,
        next_load_status=start.next_load_status,
        audit_id=decision.reused_audit_id if start.audit_from_prior else new_id,
        attempt_number=prior.attempt_number + 1 if prior else 1,
        run=start.run,
        reason=start.reason,
        scope_key=keys.scope_key(lineage_id, package_id, spec.item_fingerprint),
        prior_execution_id=prior.execution_id if prior else None,
        failure_message=start.failure_message,
        log_lines=tuple(lines),
    )


def repeat_txn(
    cat: Catalog,
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
    E = cat.s.Execution
    if spec.lease_owner is not None:
        conn.execute(
            update(E)
            .where(E.c.ExecutionID == execution_id, E.c.ExecutionStatus.in_(ACTIVE))
            .values(
                LeaseOwner=spec.lease_owner,
                LeaseExpiresAt=now + timedelta(seconds=spec.lease_seconds),
                UpdatedAt=now,
            )
        )
    row = conn.execute(select(E).where(E.c.ExecutionID == execution_id)).one()
    where = f"{cat.s.qualified(E)} row ExecutionID={execution_id}"
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


def end_task_txn(
    cat: Catalog,
    conn: Connection,
    execution_id: int,
    outcome: TaskOutcome,
    *,
    error_type: str | None = None,
    error_message: str | None = None,
    error_detail: str | None = None,
) -> TaskEnded:
    """Record how one try ended (idempotent: a second call for an ended row changes nothing)."""
    now = cat.clock()
    E = cat.s.Execution
    found = task_end_facts(cat).rows(conn, {"p_execution_id": execution_id})
    row = found[0] if found else None
    if row is None:
        raise CatalogStateError(
            f"cannot end execution {execution_id}: no such task execution in {cat.s.qualified(E)}"
        )
    where = f"{cat.s.qualified(E)} row ExecutionID={execution_id}"
    current = parse_status(row.t_status, row=where)
    batch_status = parse_status(
        row.b_status, row=f"{cat.s.qualified(E)} row ExecutionID={row.b_id}"
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
    # The writes of a task end read nothing back: they travel with the COMMIT (0101).
    end_update(cat).write(
        conn,
        {
            "p_execution_id": execution_id,
            "p_status": end.status.value,
            "p_nls": end.next_load_status.value,
            "p_now": now,
        },
    )
    if end.record_error:
        insert_error(cat).write(
            conn,
            {
                "ExecutionID": execution_id,
                "ErrorType": (error_type or "")[:255] or None,
                "ErrorMessage": error_message,
                "ErrorDetail": error_detail,
                "CreatedAt": now,
            },
        )
    if end.fail_batch:
        apply_batch_end_txn(cat, conn, int(row.b_id), int(row.b_lineage), False, now, close=False)
    return TaskEnded(execution_id, end.status, end.next_load_status, True, end.fail_batch)


_ERROR_KEYS = ("ExecutionID", "ErrorType", "ErrorMessage", "ErrorDetail", "CreatedAt")


def insert_error(cat: Catalog) -> CompiledStatement:
    """A failed try's ExecutionError INSERT, compiled once per store (decision 0108)."""
    return compiled(
        cat, "insert_error", lambda: insert(cat.s.ExecutionError), column_keys=_ERROR_KEYS
    )


def end_update(cat: Catalog) -> CompiledStatement:
    """A task end's UPDATE of its row, compiled once per store (as the facts queries are)."""

    def build() -> Any:
        E = cat.s.Execution
        return _ended(update(E).where(E.c.ExecutionID == bindparam("p_execution_id")))

    return compiled(cat, "task_end_update", build)


def _ended(statement: Update) -> Update:
    """What a task end writes to its row (parameters ``p_status``, ``p_nls``, ``p_now``): one
    home for the full path's UPDATE and the guarded one."""
    return statement.values(
        ExecutionStatus=bindparam("p_status"),
        NextLoadStatus=bindparam("p_nls"),
        EndTime=bindparam("p_now"),
        LeaseExpiresAt=None,
        UpdatedAt=bindparam("p_now"),
    )


def end_guarded(cat: Catalog, outcome: TaskOutcome) -> CompiledStatement | None:
    """The guarded UPDATE of a task end with ``outcome`` (:func:`.machine.task_end_guard`),
    compiled once per process; None when the machine has no guard for it (a failure).

    ``UPDATE Execution SET <the decision> WHERE ExecutionID = :id AND ExecutionStatus IN
    (<guard.current>) AND EXISTS (SELECT the batch row WHERE ExecutionStatus IN (<guard.batch>)
    <locked as the facts queries lock it>)``. The lock serialises the end with its siblings'
    transitions exactly as the facts query's does; on PostgreSQL a batch row or a row changed
    by a transaction that committed while the statement waited is read again (READ COMMITTED
    re-checks a locked or updated row), so a batch failed in the meantime, or a row aborted,
    matches nothing and the end is decided from the facts (decision 0120)."""
    guard = machine.task_end_guard(outcome)
    if guard is None:
        return None

    def build() -> Any:
        E = cat.s.Execution
        b = E.alias("b")
        batch = cat.impl.lock(
            select(b.c.ExecutionID).where(
                b.c.ExecutionID == E.c.ParentExecutionID,
                one_of(b.c.ExecutionStatus, sorted(s.value for s in guard.batch)),
            ),
            b,
        )
        # Prepared once per session on PostgreSQL (decision 0105): parsing and planning this
        # text took a fifth of the statement's 0.55 ms on the server.
        return prepared(
            _ended(
                update(E).where(
                    E.c.ExecutionID == bindparam("p_execution_id"),
                    one_of(E.c.ExecutionStatus, sorted(s.value for s in guard.current)),
                    batch.exists(),
                )
            ),
            f"end_{outcome.value}",
        )

    return compiled(cat, f"task_end_guarded_{outcome.value}", build)


def end_task_guarded_txn(
    cat: Catalog, conn: Connection, execution_id: int, outcome: TaskOutcome
) -> TaskEnded | None:
    """A task end in one statement, when the machine decides it without the facts and the
    guard holds (:func:`end_guarded`); None when it wrote nothing: the caller then reads the
    facts and decides (:func:`end_task_txn`). One statement, so that on PostgreSQL it can run
    outside any transaction and commit on its own: one round trip (decision 0120)."""
    guard = machine.task_end_guard(outcome)
    statement = end_guarded(cat, outcome)
    if guard is None or statement is None:
        return None
    params = {
        "p_execution_id": execution_id,
        "p_status": guard.end.status.value,
        "p_nls": guard.end.next_load_status.value,
        "p_now": cat.clock(),
    }
    if statement.execute(conn, params) != 1:
        return None
    return TaskEnded(execution_id, guard.end.status, guard.end.next_load_status, True, False)
