"""Batch start and batch end: a DAG run's row. No Airflow here.

A batch start runs under the DAG package's row lock: it reads every fact in one SELECT
(:func:`.facts.batch_start_read_txn`), closes the lapsed leases among the rows read, asks
:func:`.machine.batch_start`, and writes the new row (and, when the machine says so, closes a
crashed previous batch by inference).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from airflow_provider_bfx.catalog import keys, machine
from airflow_provider_bfx.catalog.codes import (
    ExecutionStatus,
    NextLoadStatus,
    parse_next_load_status,
    parse_status,
)
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.facts import batch_start_read_txn
from airflow_provider_bfx.catalog.leases import abort_lapsed_txn
from airflow_provider_bfx.catalog.packages import NewPackage, register_package_txn
from airflow_provider_bfx.catalog.pipeline import write
from airflow_provider_bfx.catalog.results import BatchEnded, BatchSpec
from airflow_provider_bfx.catalog.rows import (
    SELF,
    TERMINAL,
    insert_execution_txn,
    nested_line,
    token_line,
)
from airflow_provider_bfx.catalog.txn import Catalog


def start_batch_txn(cat: Catalog, conn: Connection, spec: BatchSpec) -> tuple[int, list[str]]:
    """Start (or find) the batch execution of a DAG run: its ExecutionID and the token lines
    to log once the transaction commits."""
    lines = create_batch_txn(cat, conn, spec, cat.clock())
    E = cat.s.Execution
    bid = conn.execute(
        select(E.c.ExecutionID).where(E.c.ExternalExecutionID == spec.external_id)
    ).scalar_one()
    return int(bid), lines


def package_lock(cat: Catalog) -> CompiledStatement:
    """The DAG package's row lock a batch start takes first (parameter ``p_dag``), compiled
    once per process (:mod:`.warm`, decision 0119)."""

    def build() -> Any:
        P = cat.s.Package
        return cat.impl.lock(
            select(P.c.PackageID).where(P.c.DagId == bindparam("p_dag"), P.c.TaskId.is_(None)),
            P,
        )

    return compiled(cat, "package_lock", build)


def create_batch_txn(cat: Catalog, conn: Connection, spec: BatchSpec, now: datetime) -> list[str]:
    """Create the batch row for a DAG run seen for the first time (under the DAG package's
    row lock, so two first tasks of one run, or two runs of one DAG, decide one at a time).

    On PostgreSQL this is one round trip on the common path (decision 0105): the lock travels
    in front of the one facts SELECT (:func:`.facts.batch_start_read_txn`), and the writes
    (a reconciled batch, the new row) travel with the caller's next statement."""
    lock = package_lock(cat)
    held = {"p_dag": spec.dag_id}
    lock.write(conn, held)  # its rows are not read: it only has to be taken before the read
    read = batch_start_read_txn(cat, conn, spec.dag_id, now, spec=spec)
    if read.package is None and read.new_package is not None:
        # A DAG seen for the first time: its package registered as a queued write, with the
        # id the read took (decision 0108); nothing else of the read changes.
        pkg = register_package_txn(
            cat,
            conn,
            read.new_package,
            spec.dag_id,
            None,
            parent_id=None,
            retry_limit=spec.default_retry_limit,
            max_resume_age=spec.default_max_resume_age,
        )
        if isinstance(pkg, NewPackage):
            read = replace(read, package=pkg)
        else:  # registered by its reads (SQL Server): read again under the lock
            lock.write(conn, held)
            read = batch_start_read_txn(cat, conn, spec.dag_id, now, spec=spec)
    pkg = read.package
    assert pkg is not None
    if read.batch_exists:
        return []  # another task of this run created it while we waited for the lock

    # DESIGN.md §5: an expiry scan at every batch start, so that a task that crashed with
    # its lease lapsed counts as aborted when the batch it left open is reconciled.
    expired = abort_lapsed_txn(cat, conn, read.active, now)
    lines = [lease.log_line for _, lease in expired]
    parent = read.parent
    previous = read.previous
    if previous is not None and any(
        row.batch_execution_id == previous.execution_id for row, _ in expired
    ):
        previous = replace(previous, has_failed_task=True)  # one of its tasks is A now
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
        apply_batch_end_txn(
            cat,
            conn,
            decision.reconcile.execution_id,
            previous.original_execution_id,
            decision.reconcile.succeeded,
            now,
            close=True,
        )
        lines.append(token_line(decision.reconcile.emit, dag=spec.dag_id))
    start = decision.start
    prev = decision.previous
    resume = decision.resumes and prev is not None
    new_id = insert_execution_txn(
        cat,
        conn,
        read.next_id,
        dict(
            ParentExecutionID=spec.parent_execution_id,
            OriginalExecutionID=prev.original_execution_id if resume and prev else SELF,
            LineageID=prev.original_execution_id if resume and prev else SELF,
            AuditID=SELF,
            ExternalExecutionID=spec.external_id,
            PackageID=pkg.pkg_id,
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
        lines.append(token_line(emit, dag=spec.dag_id, batch_execution_id=new_id))
    if parent is not None:
        lines.append(
            nested_line(
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


def apply_batch_end_txn(
    cat: Catalog,
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
    E = cat.s.Execution
    end = machine.batch_end(succeeded)
    # Nothing below is read back: the writes travel with the next statement or the COMMIT.
    write(
        conn,
        update(E)
        .where(E.c.ExecutionID == batch_id)
        .values(
            ExecutionStatus=end.status.value,
            NextLoadStatus=end.next_load_status.value,
            EndTime=func.coalesce(E.c.EndTime, now) if close else E.c.EndTime,
            UpdatedAt=now,
        ),
    )
    if end.stamp_completed:
        write(
            conn,
            update(E)
            .where(
                E.c.ParentExecutionID == batch_id,
                E.c.ExecutionStatus == ExecutionStatus.SUCCEEDED.value,
                # P only: an R here is `bfx reset --task` of this row, and the user's
                # instruction outlives a later failure of the same batch (decision 0103).
                E.c.NextLoadStatus == NextLoadStatus.PENDING.value,
            )
            .values(NextLoadStatus=NextLoadStatus.SKIP.value, UpdatedAt=now),
        )
    if end.reset_lineage:
        write(
            conn,
            update(E)
            .where(
                E.c.LineageID == lineage_id,
                E.c.NextLoadStatus != NextLoadStatus.PENDING.value,
                E.c.ExecutionStatus.in_(TERMINAL),  # an active row carries C (DESIGN §4)
            )
            .values(NextLoadStatus=NextLoadStatus.PENDING.value, UpdatedAt=now),
        )
    return end


def end_batch_txn(
    cat: Catalog, conn: Connection, dag_id: str, run_id: str, *, succeeded: bool
) -> BatchEnded | None:
    """Close the batch of a DAG run (listener, task side or reconciliation: same rows).

    Returns None when the run never had a routed task (no batch row)."""
    external = keys.batch_external_id(dag_id, run_id)
    E = cat.s.Execution
    row = conn.execute(
        cat.impl.lock(select(E).where(E.c.ExternalExecutionID == external), E)
    ).first()
    if row is None:
        return None
    where = f"{cat.s.qualified(E)} row ExecutionID={row.ExecutionID}"
    status = parse_status(row.ExecutionStatus, row=where)
    if status is ExecutionStatus.SKIPPED:
        return BatchEnded(
            row.ExecutionID,
            status,
            parse_next_load_status(row.NextLoadStatus, row=where),
            False,
        )
    end = apply_batch_end_txn(
        cat, conn, row.ExecutionID, row.LineageID, succeeded, cat.clock(), close=True
    )
    return BatchEnded(
        row.ExecutionID,
        end.status,
        end.next_load_status,
        changed=status is not end.status or row.EndTime is None,
    )
