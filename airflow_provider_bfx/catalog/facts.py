"""The read side of the catalog: the facts each transition decides from. No Airflow here.

Each reader runs inside the caller's transaction and returns what :mod:`.machine` takes (or the
row of one locking SELECT that gathers every fact of a task start). Nothing here writes.

Round trips are budgeted: on the common path a task start is one locking SELECT that gathers
every fact (batch row, task package, an earlier row with the same key, other active executions,
the latest terminal execution of the lineage, and the next ExecutionID), one INSERT, and the
COMMIT. Rare paths (first run of a DAG, stale leases, the RERUN policy) add statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, exists, func, or_, select

from airflow_provider_bfx.catalog import keys, machine
from airflow_provider_bfx.catalog.codes import (
    CheckpointType,
    ExecutionStatus,
    parse_next_load_status,
    parse_status,
)
from airflow_provider_bfx.catalog.liveness import PARKED_PREFIX, lease_live
from airflow_provider_bfx.catalog.results import BatchSpec, TaskSpec
from airflow_provider_bfx.catalog.rows import ACTIVE, copy_landed, decides, flag
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.exceptions import CatalogStateError


@dataclass(frozen=True)
class Parent:
    """The task execution a nested batch was triggered by, as read at its batch start."""

    execution: machine.ParentExecution
    dag_id: str | None
    task_id: str
    lineage_id: int | None
    package_id: int
    item_fingerprint: str


# -- batch start: the batch that decides, and what became of it ---------------------------------


def deciding_batch_query(cat: Catalog, package_id: int) -> Select[Any]:
    """The batch execution of a DAG package that decides its next run (the one home of this
    rule: batch start, ``bfx plan`` and ``bfx reset`` all use it). A run skipped because the
    DAG was disabled decides nothing: the batch before it does."""
    E = cat.s.Execution
    return (
        select(E)
        .where(E.c.PackageID == package_id, E.c.ExecutionStatus != ExecutionStatus.SKIPPED.value)
        .order_by(E.c.ExecutionID.desc())
        .limit(1)
    )


def parent_execution_txn(cat: Catalog, conn: Connection, spec: BatchSpec) -> Parent | None:
    """The task execution that triggered this DAG run (``spec.parent_execution_id``), or
    None for a top-level batch. An id that names no task execution of this catalog is an
    error, never a silent top-level start (docs/decisions/0070)."""
    if spec.parent_execution_id is None:
        return None
    E = cat.s.Execution
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
    where = f"{cat.s.qualified(E)} row ExecutionID={spec.parent_execution_id}"
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
    return Parent(
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


def previous_batch_txn(
    cat: Catalog, conn: Connection, package_id: int, now: datetime, *, parent: Parent | None = None
) -> machine.PreviousBatch | None:
    E = cat.s.Execution
    latest = deciding_batch_query(cat, package_id)
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
            child.c.ExecutionStatus.in_(ACTIVE),
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
            flag(failed).label("failed"),
            started.label("started"),
            parent_lineage.label("parent_lineage"),
        )
    ).one()
    where = f"{cat.s.qualified(E)} row ExecutionID={row.ExecutionID}"
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


# -- task start and task end: one locking SELECT each ------------------------------------------


def task_facts_query(cat: Catalog) -> Select[Any]:
    """The task-start facts query, built once per store: constructing it costs milliseconds
    of Python (seven aliases, ~170 columns), more than the statement itself takes to run.
    Parameters: ``p_item``, ``p_dag``, ``p_task``, ``p_task_key``, ``p_batch_key``."""
    return cat.memo("task_facts", lambda: _build_task_facts(cat))


def _build_task_facts(cat: Catalog) -> Select[Any]:
    E, P = cat.s.Execution, cat.s.Package
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
    active_copy = copy_landed(cat, a)
    # The latest copy checkpoint of this task and item in this lineage, and its writer.
    lc, lw, cw = cat.s.ExecutionCheckpoint.alias("lc"), E.alias("lw"), E.alias("cw")
    cc = cat.s.ExecutionCheckpoint.alias("cc")
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
        flag(active_copy).label("a_copy"),
        p.c.ExecutionID.label("p_id"),
        p.c.ExecutionStatus.label("p_status"),
        p.c.NextLoadStatus.label("p_nls"),
        p.c.AuditID.label("p_audit"),
        p.c.OriginalExecutionID.label("p_original"),
        p.c.AttemptNumber.label("p_attempt"),
        p.c.OperatorFingerprint.label("p_opfp"),
        cat.impl.next_id_column(),
    ]
    frm = (
        b.join(bp, bp.c.PackageID == b.c.PackageID)
        .outerjoin(tp, and_(tp.c.DagId == bindparam("p_dag"), tp.c.TaskId == bindparam("p_task")))
        .outerjoin(x, x.c.ExternalExecutionID == bindparam("p_task_key"))
        .outerjoin(
            a,
            and_(
                a.c.PackageID == tp.c.PackageID,
                a.c.ItemFingerprint == bindparam("p_item"),
                a.c.ExecutionStatus.in_(ACTIVE),
                a.c.ExternalExecutionID != bindparam("p_task_key"),
            ),
        )
        .outerjoin(p, p.c.ExecutionID == prior_id)
        .outerjoin(lc, lc.c.CheckpointID == landed_id)
        .outerjoin(lw, lw.c.ExecutionID == lc.c.ExecutionID)
    )
    query = (
        select(*cols).select_from(frm).where(b.c.ExternalExecutionID == bindparam("p_batch_key"))
    )
    return cat.impl.lock(query, b)


def task_facts_params(spec: TaskSpec) -> dict[str, Any]:
    return {
        "p_item": spec.item_fingerprint,
        "p_dag": spec.batch.dag_id,
        "p_task": spec.task_id,
        "p_task_key": spec.external_id,
        "p_batch_key": spec.batch.external_id,
    }


def task_end_facts_query(cat: Catalog) -> Select[Any]:
    """The task-end facts query (built once per store; parameter ``p_execution_id``)."""
    return cat.memo("task_end_facts", lambda: _build_task_end_facts(cat))


def _build_task_end_facts(cat: Catalog) -> Select[Any]:
    E = cat.s.Execution
    t, b = E.alias("t"), E.alias("b")
    landed = copy_landed(cat, t)
    return cat.impl.lock(
        select(
            t.c.ExecutionStatus.label("t_status"),
            t.c.NextLoadStatus.label("t_nls"),
            b.c.ExecutionID.label("b_id"),
            b.c.ExecutionStatus.label("b_status"),
            b.c.LineageID.label("b_lineage"),
            flag(landed).label("copy_landed"),
        )
        .select_from(t.join(b, b.c.ExecutionID == t.c.ParentExecutionID))
        .where(t.c.ExecutionID == bindparam("p_execution_id")),
        b,
    )
