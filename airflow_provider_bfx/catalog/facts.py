"""The read side of the catalog: the facts each transition decides from. No Airflow here.

Each reader runs inside the caller's transaction and returns what :mod:`.machine` takes (or the
row of one locking SELECT that gathers every fact of a task start). Nothing here writes.

Round trips are budgeted: on the common path a task start is one locking SELECT that gathers
every fact (batch row, task package, an earlier row with the same key, other active executions,
the latest terminal execution of the lineage, and the next ExecutionID), one INSERT, and the
COMMIT; a batch start is one more SELECT (:func:`batch_start_read_txn`). Rare paths (first run
of a DAG, stale leases, the RERUN policy) add statements. The facts queries are built once per
store and, on PostgreSQL, prepared once per session (:func:`.pipeline.prepared`, decision 0105).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    or_,
    select,
)

from airflow_provider_bfx.catalog import keys, machine
from airflow_provider_bfx.catalog.codes import (
    CheckpointType,
    ExecutionStatus,
    parse_next_load_status,
    parse_status,
)
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.leases import (
    ActiveTask,
    active_row_columns,
    active_task,
    active_task_columns,
    may_have_lapsed,
)
from airflow_provider_bfx.catalog.liveness import lease_live, this_host
from airflow_provider_bfx.catalog.packages import (
    PackageFacts,
    package_facts,
    package_facts_columns,
)
from airflow_provider_bfx.catalog.pipeline import prepared
from airflow_provider_bfx.catalog.results import BatchSpec, TaskSpec
from airflow_provider_bfx.catalog.rows import (
    by_lineage_index,
    copy_landed,
    decides,
    flag,
    item_rows,
    item_rows_ordered,
    landed_copies,
    one_of,
)
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


def deciding_batch_query(cat: Catalog, package_id: Any) -> Select[Any]:
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


@dataclass(frozen=True)
class BatchStartRead:
    """What a batch start decides from, read in one statement (:func:`batch_start_read_txn`)."""

    package: Any | None  # the DAG package row (PackageID, IsEnabled, RetryLimit, MaxResumeAge)
    batch_exists: bool  # the run's batch row is there already (another task created it)
    parent: Parent | None
    previous: machine.PreviousBatch | None
    active: tuple[ActiveTask, ...]  # active task rows the expiry scan or the liveness reads
    next_id: int | None  # the new batch row's ExecutionID, when known before the INSERT
    # Without a DAG package: its next id and any execution of the DAG without it (0108).
    new_package: PackageFacts | None = None


def batch_start_read_txn(
    cat: Catalog, conn: Connection, dag_id: str, now: datetime, *, spec: BatchSpec | None = None
) -> BatchStartRead:
    """Every fact of a batch start in one SELECT: the DAG package, whether the run's batch
    row exists, the triggering task execution (``spec.parent_execution_id``), the batch that
    decides and what became of it, the active task rows that the expiry scan closes or whose
    leases make the previous batch live, and the next ExecutionID.

    ``spec`` None reads for ``bfx plan``: no run, no parent, and no id taken from a sequence.
    The caller takes the DAG package's row lock *before* this statement (PostgreSQL reads a
    statement's other rows as of before its own lock wait). An id in
    ``spec.parent_execution_id`` that names no task execution of this catalog is an error,
    never a silent top-level start (docs/decisions/0070)."""
    params = {
        "p_dag": dag_id,
        "p_now": now,
        "p_host": f"{this_host()}:",
        "p_batch_key": None if spec is None else spec.external_id,
        "p_parent": None if spec is None else spec.parent_execution_id,
    }
    rows = batch_start_facts(cat, with_next_id=spec is not None).rows(conn, params)
    f = rows[0]  # one row at least: the query is driven by a one-row source
    if f.pkg_id is None:  # a DAG seen for the first time: nothing of it to read
        if spec is None:
            return BatchStartRead(None, False, None, None, (), None)
        return BatchStartRead(
            package=None,
            batch_exists=False,
            parent=_parent(cat, spec, f),
            previous=None,
            active=tuple(ActiveTask.of_row(r) for r in rows if r.a_id is not None),
            next_id=None if f.next_id is None else int(f.next_id),
            new_package=package_facts(f),
        )
    parent = None if spec is None else _parent(cat, spec, f)
    active = tuple(ActiveTask.of_row(r) for r in rows if r.a_id is not None)
    previous = None
    if f.prev_id is not None:
        where = cat.where(f.prev_id)
        previous = machine.PreviousBatch(
            execution_id=f.prev_id,
            status=parse_status(f.prev_status, row=where),
            next_load_status=parse_next_load_status(f.prev_nls, row=where),
            original_execution_id=f.prev_original or f.prev_id,
            attempt_number=f.prev_attempt,
            lineage_started_at=f.prev_started or f.prev_start,
            logical_date=f.prev_logical_date,
            # Live anywhere in the lineage: a try of an earlier attempt may still be running.
            has_live_task=any(
                lease_live(r.lease_owner, r.lease_expires_at, now)
                for r in active
                if r.lineage_id == f.prev_lineage
            ),
            has_failed_task=bool(f.prev_failed),
            parent_lineage=None if f.prev_parent_lineage is None else int(f.prev_parent_lineage),
        )
    return BatchStartRead(
        package=f,
        batch_exists=f.x_id is not None,
        parent=parent,
        previous=previous,
        active=active,
        next_id=None if f.next_id is None else int(f.next_id),
    )


def _parent(cat: Catalog, spec: BatchSpec, f: Any) -> Parent | None:
    """The task execution that triggered this DAG run, from the batch-start row."""
    if spec.parent_execution_id is None:
        return None
    where = cat.where(spec.parent_execution_id)
    fix = (
        " Trigger the run from a routed task, or remove bfx.parent_execution_id from the"
        " run's conf to start it as a top-level batch."
    )
    if f.par_id is None:
        raise CatalogStateError(
            f"DAG run {spec.dag_id}/{spec.run_id}: its conf names parent_execution_id="
            f"{spec.parent_execution_id}, but {where} does not exist in this catalog." + fix
        )
    if f.par_task is None:
        raise CatalogStateError(
            f"DAG run {spec.dag_id}/{spec.run_id}: its conf names parent_execution_id="
            f"{spec.parent_execution_id}, but {where} is a batch execution (a DAG run of"
            f" {f.par_dag!r}), not the task execution that triggered this run." + fix
        )
    return Parent(
        machine.ParentExecution(
            execution_id=int(f.par_id),
            lineage=int(f.par_original or f.par_id),
        ),
        dag_id=f.par_dag,
        task_id=f.par_task,
        lineage_id=f.par_lineage,
        package_id=f.par_package,
        item_fingerprint=f.par_item,
    )


def batch_start_facts_query(cat: Catalog, *, with_next_id: bool) -> Select[Any]:
    """The batch-start facts query, built once per store. Parameters: ``p_dag``, ``p_now``,
    ``p_host``, ``p_batch_key``, ``p_parent``. One row per active task row it reads (the
    other columns repeat), one row when there is none, also without a DAG package (then with
    :func:`.packages.package_facts_columns`, so that a new DAG's package is registered
    without a read of its own, decision 0108)."""
    name = f"batch_facts_{int(with_next_id)}"
    return cat.memo(name, lambda: prepared(_build_batch_start_facts(cat, with_next_id), name))


def batch_start_facts(cat: Catalog, *, with_next_id: bool) -> CompiledStatement:
    """:func:`batch_start_facts_query` compiled once per process: the first task of every
    run reads it (8-9 ms of CPU to compile), :mod:`.warm` compiles it before a fork
    (decision 0119)."""
    return compiled(
        cat,
        f"batch_facts_{int(with_next_id)}_compiled",
        lambda: batch_start_facts_query(cat, with_next_id=with_next_id),
    )


def _build_batch_start_facts(cat: Catalog, with_next_id: bool) -> Select[Any]:
    E, P = cat.s.Execution, cat.s.Package
    p, par, prev = P.alias("p"), E.alias("par"), E.alias("prev")
    origin, trigger, a = E.alias("origin"), E.alias("trigger"), E.alias("a")
    x, child, trig = E.alias("x"), E.alias("child"), E.alias("trig")
    latest = deciding_batch_query(cat, p.c.PackageID)
    # A nested batch: the latest batch of this DAG triggered from the same lineage of the
    # same parent task (its tries and resumed attempts), so that another trigger of the same
    # DAG (another task, another item) in between does not hide it. None: the latest batch
    # of the DAG, which the machine then starts fresh from.
    nested = latest.where(
        par.c.ExecutionID.is_not(None),  # a top-level batch reads nothing here
        E.c.ParentExecutionID.in_(
            select(trig.c.ExecutionID)
            .where(
                trig.c.LineageID == par.c.LineageID,
                trig.c.PackageID == par.c.PackageID,
                trig.c.ItemFingerprint == par.c.ItemFingerprint,
            )
            # Named: auto-correlation does not reach two levels up (without it, `par` would be
            # a FROM of its own here and the IN list every triggered batch).
            .correlate(par)
        ),
    )
    prev_id = func.coalesce(
        nested.with_only_columns(E.c.ExecutionID).scalar_subquery(),
        latest.with_only_columns(E.c.ExecutionID).scalar_subquery(),
    )
    failed = exists().where(
        child.c.ParentExecutionID == prev.c.ExecutionID,
        one_of(
            child.c.ExecutionStatus,
            [ExecutionStatus.FAILED.value, ExecutionStatus.ABORTED.value],
        ),
    )
    now: Any = bindparam("p_now")
    host: Any = bindparam("p_host")
    # The expiry scan's rows, and every active task row of the previous batch's lineage
    # (few rows are active): whether one is live is decided in Python (lease_live).
    watched = and_(
        active_task(a), or_(may_have_lapsed(a, now, host), a.c.LineageID == prev.c.LineageID)
    )
    cols = [
        p.c.PackageID.label("pkg_id"),
        # Labelled by key: the row is read by attribute on every engine (:mod:`.compiled`).
        p.c.IsEnabled.label("IsEnabled"),
        p.c.RetryLimit.label("RetryLimit"),
        p.c.MaxResumeAge.label("MaxResumeAge"),
        select(x.c.ExecutionID)
        .where(x.c.ExternalExecutionID == bindparam("p_batch_key"))
        .scalar_subquery()
        .label("x_id"),
        par.c.ExecutionID.label("par_id"),
        par.c.OriginalExecutionID.label("par_original"),
        par.c.LineageID.label("par_lineage"),
        par.c.PackageID.label("par_package"),
        par.c.ItemFingerprint.label("par_item"),
        par.c.DagId.label("par_dag"),
        par.c.TaskId.label("par_task"),
        prev.c.ExecutionID.label("prev_id"),
        prev.c.ExecutionStatus.label("prev_status"),
        prev.c.NextLoadStatus.label("prev_nls"),
        prev.c.OriginalExecutionID.label("prev_original"),
        prev.c.LineageID.label("prev_lineage"),
        prev.c.AttemptNumber.label("prev_attempt"),
        prev.c.StartTime.label("prev_start"),
        prev.c.LogicalDate.label("prev_logical_date"),
        origin.c.StartTime.label("prev_started"),
        func.coalesce(trigger.c.OriginalExecutionID, trigger.c.ExecutionID).label(
            "prev_parent_lineage"
        ),
        flag(failed).label("prev_failed"),
        *active_task_columns(cat, a),
        # One id per statement, not one per row: an uncorrelated scalar subquery runs once
        # (PostgreSQL: an InitPlan), where nextval() in the select list would run per row.
        select(cat.impl.next_id_column()).scalar_subquery().label("next_id")
        if with_next_id
        else null().label("next_id"),
        *(
            package_facts_columns(cat, p, bindparam("p_dag"), None)
            if with_next_id
            else [null().label("new_pkg_id"), null().label("orphan_id")]
        ),
    ]
    # Driven by one row, the DAG package outer-joined to it: a DAG seen for the first time
    # still reads its parent, the lapsed leases and the next ids in this one statement.
    one = select(literal(1).label("one")).subquery("one")
    frm = (
        one.outerjoin(p, and_(p.c.DagId == bindparam("p_dag"), p.c.TaskId.is_(None)))
        .outerjoin(par, par.c.ExecutionID == bindparam("p_parent"))
        .outerjoin(prev, prev.c.ExecutionID == prev_id)
        .outerjoin(origin, origin.c.ExecutionID == prev.c.OriginalExecutionID)
        .outerjoin(trigger, trigger.c.ExecutionID == prev.c.ParentExecutionID)
        .outerjoin(a, watched)
    )
    return select(*cols).select_from(frm)


# -- task start and task end: one locking SELECT each ------------------------------------------


def task_facts_query(cat: Catalog) -> Select[Any]:
    """The task-start facts query, built once per store: constructing it costs milliseconds
    of Python (seven aliases, ~170 columns), more than the statement itself takes to run.
    Parameters: ``p_item``, ``p_dag``, ``p_task``, ``p_task_key``, ``p_ahead_key``,
    ``p_batch_key``."""
    return cat.memo("task_facts", lambda: prepared(_build_task_facts(cat), "task_facts"))


def _build_task_facts(cat: Catalog) -> Select[Any]:
    E, P = cat.s.Execution, cat.s.Package
    b, bp, tp = E.alias("b"), P.alias("bp"), P.alias("tp")
    x, a, p, ah = E.alias("x"), E.alias("a"), E.alias("p"), E.alias("ah")
    # The per-item lookups below (the row that decides, the landed copy's writer, the first
    # row) read ix_execution_lineage_package on PostgreSQL whatever the statistics: an ordered
    # LIMIT 1 / an ordered subquery over rows.item_rows instead of max()/min() (decision 0111).
    ordered = by_lineage_index(cat)
    item: Any = bindparam("p_item")
    inner = E.alias("inner")
    mine = item_rows(cat, inner, b.c.LineageID, tp.c.PackageID, item)
    prior_id = (
        select(inner.c.ExecutionID)
        .where(mine, decides(inner))
        .order_by(*item_rows_ordered(inner, latest=True))
        .limit(1)
        if ordered
        else select(func.max(inner.c.ExecutionID)).where(mine, decides(inner))
    ).scalar_subquery()
    # The latest copy checkpoint of this task and item in this lineage, and its writer. Its id
    # is found from the writers (the lineage index, then the checkpoints' ExecutionID index);
    # the writer and its fingerprint are read by scalar subqueries, the fingerprint only when
    # there is a writer (CASE evaluates its branch on demand). Never an outer join of the
    # checkpoint table on that id: on a small catalog its generic plan read and hashed the
    # whole table on every call, a seq scan of a few pages being the cheaper guess than an
    # index probe (a third of the statement's server time; decision 0108, Update).
    C = cat.s.ExecutionCheckpoint
    landed, from_, where = landed_copies(
        cat, b.c.LineageID, tp.c.PackageID, item, correlate=(b, tp), name="landed_"
    )
    landed_id = (
        select(func.max(landed.c.CheckpointID))
        .select_from(from_)
        .where(*where)
        .correlate(b, tp)
        .scalar_subquery()
    )
    lc, lw, cc = C.alias("lc"), E.alias("lw"), C.alias("cc")
    # Its writer, and the writer's latest copy checkpoint (the same row: the latest of all).
    writer = select(lc.c.ExecutionID).where(lc.c.CheckpointID == landed_id).scalar_subquery()
    mine = (
        select(func.max(cc.c.CheckpointID))
        .where(
            cc.c.ExecutionID == lw.c.ExecutionID,
            cc.c.CheckpointType == CheckpointType.NODE_OUTPUT.value,
            cc.c.NodeKey == keys.COPY_NODE,
        )
        .correlate(lw)
        .scalar_subquery()
    )
    landed_fp = select(lc.c.OperatorFingerprint).where(lc.c.CheckpointID == mine).scalar_subquery()
    first = E.alias("first")
    first_of = item_rows(cat, first, b.c.LineageID, tp.c.PackageID, item)
    first_id = (
        select(first.c.ExecutionID)
        .where(first_of)
        .order_by(*item_rows_ordered(first, latest=False))
        .limit(1)
        if ordered
        else select(func.min(first.c.ExecutionID)).where(first_of)
    ).scalar_subquery()
    cols = [
        first_id.label("first_id"),
        lw.c.ExecutionID.label("l_writer"),
        lw.c.AuditID.label("l_audit"),
        case(
            (
                lw.c.ExecutionID.is_not(None),
                func.coalesce(landed_fp, lw.c.OperatorFingerprint),
            ),
            else_=null(),
        ).label("l_opfp"),
        b.c.ExecutionID.label("b_id"),
        b.c.ExecutionStatus.label("b_status"),
        b.c.LineageID.label("b_lineage"),
        b.c.PackageID.label("b_package"),
        b.c.EndTime.label("b_end"),
        bp.c.IsEnabled.label("b_enabled"),
        tp.c.PackageID.label("tp_id"),
        tp.c.IsEnabled.label("tp_enabled"),
        x.c.ExecutionID.label("x_id"),
        # The row skip ahead wrote for this task in this batch (decision 0106), if any.
        select(ah.c.ExecutionID)
        .where(
            ah.c.ExternalExecutionID == bindparam("p_ahead_key"),
            ah.c.ParentExecutionID == b.c.ExecutionID,
        )
        .scalar_subquery()
        .label("ahead_id"),
        *active_row_columns(cat, a),
        p.c.ExecutionID.label("p_id"),
        p.c.ExecutionStatus.label("p_status"),
        p.c.NextLoadStatus.label("p_nls"),
        p.c.AuditID.label("p_audit"),
        p.c.OriginalExecutionID.label("p_original"),
        p.c.AttemptNumber.label("p_attempt"),
        p.c.OperatorFingerprint.label("p_opfp"),
        cat.impl.next_id_column(),
        # A task package seen for the first time: registered without a read (0108).
        *package_facts_columns(cat, tp, bindparam("p_dag"), bindparam("p_task")),
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
                # Stated as the partial unique index's own predicate (TaskId IS NOT NULL and an
                # active status; a task package's rows all have a TaskId), so that the generic
                # plan answers it from `uq_execution_one_active` in one probe instead of reading
                # every row of the package from `ix_execution_package_status` (a mapped task's
                # package holds a row per item per run; decision 0111).
                active_task(a),
                a.c.ExternalExecutionID != bindparam("p_task_key"),
            ),
        )
        .outerjoin(p, p.c.ExecutionID == prior_id)
        .outerjoin(lw, lw.c.ExecutionID == writer)
    )
    query = (
        select(*cols).select_from(frm).where(b.c.ExternalExecutionID == bindparam("p_batch_key"))
    )
    return cat.impl.lock(query, b)


def task_facts(cat: Catalog) -> CompiledStatement:
    """:func:`task_facts_query` compiled once for the catalog's engine (decision 0108)."""
    return compiled(cat, "task_facts_compiled", lambda: task_facts_query(cat))


def task_end_facts(cat: Catalog) -> CompiledStatement:
    """:func:`task_end_facts_query` compiled once for the catalog's engine (decision 0108)."""
    return compiled(cat, "task_end_facts_compiled", lambda: task_end_facts_query(cat))


def task_facts_params(spec: TaskSpec) -> dict[str, Any]:
    return {
        "p_item": spec.item_fingerprint,
        "p_dag": spec.batch.dag_id,
        "p_task": spec.task_id,
        "p_task_key": spec.external_id,
        "p_ahead_key": keys.task_external_id(
            spec.batch.dag_id, spec.batch.run_id, spec.task_id, spec.map_index, keys.AHEAD_TRY
        ),
        "p_batch_key": spec.batch.external_id,
    }


def task_end_facts_query(cat: Catalog) -> Select[Any]:
    """The task-end facts query (built once per store; parameter ``p_execution_id``)."""
    return cat.memo("task_end_facts", lambda: prepared(_build_task_end_facts(cat), "end_facts"))


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
