"""Leases: renewal, hand-over to Airflow (park), and the expiry scan. No Airflow here.

A running try holds its row through ``LeaseOwner``/``LeaseExpiresAt`` (DESIGN.md §5); a lease
that lapsed, or whose owner is known dead, is closed by :func:`abort_lapsed_txn`: at every batch
start (from the rows its facts query read, :func:`may_have_lapsed`) and by the expiry scan
(:func:`expire_txn`, ``bfx recover``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from airflow_provider_bfx.catalog import machine
from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.liveness import owner_known_dead, parked_owner, this_host
from airflow_provider_bfx.catalog.results import ExpiredLease
from airflow_provider_bfx.catalog.rows import ACTIVE, copy_landed, flag, one_of, token_line
from airflow_provider_bfx.catalog.txn import Catalog


def _held(E: Any, execution_id: int, owner: str) -> Any:
    """Execution ``execution_id`` is still active and its lease still held by ``owner``."""
    return and_(
        E.c.ExecutionID == execution_id,
        E.c.ExecutionStatus.in_(ACTIVE),
        E.c.LeaseOwner == owner,
    )


def renew_lease_txn(
    cat: Catalog, conn: Connection, execution_id: int, owner: str, seconds: float
) -> bool:
    """Extend an active execution's lease; False when the row is no longer active or owned."""
    E = cat.s.Execution
    now = cat.clock()
    result = conn.execute(
        update(E)
        .where(_held(E, execution_id, owner))
        .values(LeaseExpiresAt=now + timedelta(seconds=seconds), UpdatedAt=now)
    )
    return bool(result.rowcount)


def park_txn(
    cat: Catalog, conn: Connection, execution_id: int, owner: str, airflow_state: str
) -> bool:
    """Hand an active execution's lease to Airflow: its try is parked outside any process
    (``deferred``, ``up_for_reschedule``, ``awaiting_input``) and its process is ending.

    ``LeaseOwner`` becomes ``airflow:<state>`` and ``LeaseExpiresAt`` NULL: the lease stays
    live with no process to renew it, so neither the expiry scan nor a dead-owner check
    aborts the try (decision 0082). Only a row still held by ``owner`` is changed; False
    when it was not (ended, reset, or taken over meanwhile)."""
    E = cat.s.Execution
    result = conn.execute(
        update(E)
        .where(_held(E, execution_id, owner))
        .values(
            LeaseOwner=parked_owner(airflow_state),
            LeaseExpiresAt=None,
            UpdatedAt=cat.clock(),
        )
    )
    return bool(result.rowcount)


@dataclass(frozen=True)
class ActiveTask:
    """An active task execution as the expiry scan (and a batch start) reads it."""

    execution_id: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    lineage_id: int | None
    audit_id: int | None
    original_execution_id: int | None
    attempt_number: int
    operator_fingerprint: str | None
    batch_execution_id: int | None
    dag_id: str | None
    task_id: str | None
    copy_landed: bool
    batch_status: str | None

    @classmethod
    def of_row(cls, row: Any) -> ActiveTask:
        """From a row of :func:`active_task_columns`."""
        return cls(
            execution_id=int(row.a_id),
            lease_owner=row.a_owner,
            lease_expires_at=row.a_expires,
            lineage_id=row.a_lineage,
            audit_id=row.a_audit,
            original_execution_id=row.a_original,
            attempt_number=int(row.a_attempt or 1),
            operator_fingerprint=row.a_opfp,
            batch_execution_id=row.a_batch,
            dag_id=row.a_dag,
            task_id=row.a_task,
            copy_landed=bool(row.a_copy),
            batch_status=row.a_batch_status,
        )


def active_row_columns(cat: Catalog, a: Any) -> list[Any]:
    """What the state machine reads of an active row ``a`` (an ``Execution`` alias): its lease,
    lineage, reuse ids, definition, and whether its lineage's copy step landed. The task-start
    facts query reads these; :func:`active_task_columns` adds where the row sits."""
    return [
        a.c.ExecutionID.label("a_id"),
        a.c.LeaseOwner.label("a_owner"),
        a.c.LeaseExpiresAt.label("a_expires"),
        a.c.LineageID.label("a_lineage"),
        a.c.AuditID.label("a_audit"),
        a.c.OriginalExecutionID.label("a_original"),
        a.c.AttemptNumber.label("a_attempt"),
        a.c.OperatorFingerprint.label("a_opfp"),
        flag(copy_landed(cat, a)).label("a_copy"),
    ]


def active_task_columns(cat: Catalog, a: Any) -> list[Any]:
    """The columns of :class:`ActiveTask` read from ``a`` (an ``Execution`` alias)."""
    E = cat.s.Execution
    parent = E.alias("a_parent")
    return [
        *active_row_columns(cat, a),
        a.c.ParentExecutionID.label("a_batch"),
        a.c.DagId.label("a_dag"),
        a.c.TaskId.label("a_task"),
        select(parent.c.ExecutionStatus)
        .where(parent.c.ExecutionID == a.c.ParentExecutionID)
        .scalar_subquery()
        .label("a_batch_status"),
    ]


def active_task(a: Any) -> Any:
    """``a`` (an ``Execution`` alias) is an active task row: the only rows whose lease counts."""
    return and_(one_of(a.c.ExecutionStatus, ACTIVE), a.c.TaskId.is_not(None))


def may_have_lapsed(a: Any, now: Any, host_prefix: Any) -> Any:
    """Of the active task rows, those the expiry scan reads: their lease lapsed, or they are
    held by a process of this host (``host_prefix`` is ``"<host>:"``), which may be known
    dead. :func:`abort_lapsed_txn` decides which of them to close."""
    return or_(a.c.LeaseExpiresAt <= now, a.c.LeaseOwner.startswith(host_prefix))


def expire_txn(cat: Catalog, conn: Connection, now: datetime) -> list[ExpiredLease]:
    """Close every active task execution whose lease lapsed (the expiry scan,
    ``CatalogStore.expire_leases``)."""
    a = cat.s.Execution.alias("a")
    rows = conn.execute(
        select(*active_task_columns(cat, a)).where(
            active_task(a), may_have_lapsed(a, now, f"{this_host()}:")
        )
    ).all()
    return [
        lease for _, lease in abort_lapsed_txn(cat, conn, [ActiveTask.of_row(r) for r in rows], now)
    ]


def abort_lapsed_txn(
    cat: Catalog, conn: Connection, rows: Iterable[ActiveTask], now: datetime
) -> list[tuple[ActiveTask, ExpiredLease]]:
    """Abort those of ``rows`` whose lease lapsed or whose owner is known dead; each row
    aborted here, with its ``BFX_LEASE_EXPIRED`` result. Rows that are not are passed over.

    A row whose batch already ended successfully gets NextLoadStatus P: its lineage is
    closed, nothing waits for it."""
    E = cat.s.Execution
    out: list[tuple[ActiveTask, ExpiredLease]] = []
    for r in rows:
        lapsed = r.lease_expires_at is not None and r.lease_expires_at <= now
        if not lapsed and not owner_known_dead(r.lease_owner):
            continue
        abort = machine.expire(
            machine.ActiveExecution(
                execution_id=r.execution_id,
                lease_owner=r.lease_owner,
                lease_expires_at=r.lease_expires_at,
                lease_live=False,
                owner_dead=not lapsed,
                has_copy_checkpoint=r.copy_landed,
                in_this_lineage=True,
                audit_id=r.audit_id,
                original_execution_id=r.original_execution_id,
                attempt_number=r.attempt_number,
                operator_fingerprint=r.operator_fingerprint,
                batch_succeeded=r.batch_status == ExecutionStatus.SUCCEEDED.value,
            ),
            now,
        )
        changed = conn.execute(
            update(E)
            .where(
                E.c.ExecutionID == r.execution_id,
                E.c.ExecutionStatus.in_(ACTIVE),
                # Not renewed (nor taken over) since it was read.
                E.c.LeaseOwner == r.lease_owner,
                E.c.LeaseExpiresAt == r.lease_expires_at,
            )
            .values(
                ExecutionStatus=ExecutionStatus.ABORTED.value,
                NextLoadStatus=abort.next_load_status.value,
                EndTime=now,
                UpdatedAt=now,
            )
        ).rowcount
        if changed:
            text = token_line(
                abort.emit,
                dag=r.dag_id,
                task=r.task_id,
                batch_execution_id=r.batch_execution_id,
            )
            out.append((r, ExpiredLease(r.execution_id, abort.next_load_status, text)))
    return out
