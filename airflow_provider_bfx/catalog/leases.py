"""Leases: renewal, hand-over to Airflow (park), and the expiry scan. No Airflow here.

A running try holds its row through ``LeaseOwner``/``LeaseExpiresAt`` (DESIGN.md §5); a lease
that lapsed, or whose owner is known dead, is closed by :func:`expire_txn` at every batch start
and by the expiry scan.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from airflow_provider_bfx.catalog import machine
from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.liveness import owner_known_dead, parked_owner, this_host
from airflow_provider_bfx.catalog.results import ExpiredLease
from airflow_provider_bfx.catalog.rows import ACTIVE, copy_landed, flag, token_line
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


def expire_txn(cat: Catalog, conn: Connection, now: datetime) -> list[ExpiredLease]:
    """Close every active task execution whose lease lapsed (the expiry scan,
    ``CatalogStore.expire_leases``).

    A row whose batch already ended successfully gets NextLoadStatus P: its lineage is
    closed, nothing waits for it."""
    E = cat.s.Execution
    a, parent = E.alias("a"), E.alias("parent")
    landed = copy_landed(cat, a)
    rows = conn.execute(
        select(
            a,
            flag(landed).label("copy_landed"),
            select(parent.c.ExecutionStatus)
            .where(parent.c.ExecutionID == a.c.ParentExecutionID)
            .scalar_subquery()
            .label("batch_status"),
        ).where(
            a.c.ExecutionStatus.in_(ACTIVE),
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
                E.c.ExecutionStatus.in_(ACTIVE),
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
            text = token_line(
                abort.emit,
                dag=r.DagId,
                task=r.TaskId,
                batch_execution_id=r.ParentExecutionID,
            )
            out.append(ExpiredLease(r.ExecutionID, abort.next_load_status, text))
    return out
