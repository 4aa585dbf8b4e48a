"""Airflow's outcome is evidence: find the runs whose rows it may contradict, and adopt it.
No Airflow here (routing asks Airflow and passes :class:`~.results.RunEvidence` in)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, func, insert, select, update

from airflow_provider_bfx.catalog import evidence, keys
from airflow_provider_bfx.catalog.batches import apply_batch_end_txn
from airflow_provider_bfx.catalog.codes import ExecutionStatus, Token, format_token, parse_status
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.results import RunAwaitingEvidence, RunEvidence
from airflow_provider_bfx.catalog.rows import ACTIVE, copy_landed, flag, one_of
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.catalog.upstreams import latest_item_rows_txn, latest_task_rows_txn


def runs_awaiting_evidence_txn(
    cat: Catalog,
    conn: Connection,
    dag_id: str,
    run_id: str,
    *,
    task_id: str | None = None,
    item_fingerprint: str | None = None,
    limit: int = 5,
) -> list[RunAwaitingEvidence]:
    """The batches of ``dag_id``'s latest lineage (other than ``run_id``, newest first, at
    most ``limit``) whose rows Airflow may contradict. A batch that closed cleanly
    (succeeded, closed, no active task row) is listed with ``settled=True`` and no task ids:
    only a DAG run marked failed by hand afterwards can contradict it, which one cheap
    question to Airflow settles. Nothing is listed for a DAG without batches.

    Nothing is listed either once ``run_id``'s own batch exists in a newer lineage than those
    batches: the lineage was chosen when that batch was created (the evidence was read before,
    by the task start that created it), and no later decision of this run reads the older
    lineage's rows. Without this, every task start of every fresh run asked Airflow again about
    the previous, cleanly closed run (one execution-API call per task, issue 12).

    When ``run_id``'s batch exists in the same lineage (a resumed run after its first task
    start), the runs are listed with ``batch_started``: the start that created the batch read
    the whole runs' evidence (DAG run states included) and chose the lineage with it; what is
    left for a later start is its own task's rows, the only rows of those runs its decision
    reads. A settled run is then not listed (only a DAG run marked failed could contradict it,
    and that decides the lineage, already chosen), and no task ids are read; with ``task_id``
    (the asking task), its latest rows in each run are read, so that the adoption transaction
    (which locks that batch) runs only where Airflow disagrees with one. Without this,
    every task start of a resumed run asked Airflow for every run's state and every task's
    state, and locked the earlier batch to compare them all (issue 12). With
    ``item_fingerprint`` (the asking try is a mapped item), only the task's rows holding that
    item identity are read: a mapped item's decision reads only its own identity's rows, and
    reading every item's rows made each item start of a resumed 2,000-item task read 2,000
    rows (and ask Airflow for 2,000 states)."""
    fetched = batches(cat, limit + 1).rows(conn, {"p_dag": dag_id})
    rows = [r for r in fetched if r.RunId != run_id][:limit]
    own = next((r for r in fetched if r.RunId == run_id), None)
    if (
        rows
        and own is not None
        and own.ExecutionID > rows[0].ExecutionID
        and own.LineageID != rows[0].LineageID
    ):
        return []  # this run's batch already chose a newer lineage
    out: list[RunAwaitingEvidence] = []
    for r in rows:
        if r.LineageID != rows[0].LineageID:
            break
        settled = (
            r.ExecutionStatus == ExecutionStatus.SUCCEEDED.value
            and r.EndTime is not None
            and not r.has_active
        )
        if settled and (out or own is not None):
            # An older clean batch of the lineage, superseded by the newer; or the lineage
            # was already chosen by this run's batch start.
            continue
        if own is not None:
            rows_of_task = (
                None
                if task_id is None
                else tuple(
                    latest_task_rows_txn(cat, conn, dag_id, str(r.RunId), [task_id])
                    if item_fingerprint is None
                    else latest_item_rows_txn(
                        cat, conn, dag_id, str(r.RunId), r.LineageID, task_id, item_fingerprint
                    )
                )
            )
            out.append(
                RunAwaitingEvidence(
                    str(r.RunId), int(r.ExecutionID), settled, (), True, rows_of_task
                )
            )
            continue
        out.append(
            RunAwaitingEvidence(
                str(r.RunId), int(r.ExecutionID), settled, task_ids_txn(cat, conn, r)
            )
        )
    return out


def batches_query(cat: Catalog, limit: int) -> Select[Any]:
    """The DAG ``p_dag``'s newest ``limit`` batch rows, with whether each has an active task
    row. Built once per store: building it (an alias of the wide Execution table) cost more
    than running it, on every task start (issue 12); :mod:`.warm` builds it before a fork."""

    def build() -> Select[Any]:
        E = cat.s.Execution
        t = E.alias("t")
        active_child = exists().where(
            t.c.ParentExecutionID == E.c.ExecutionID, one_of(t.c.ExecutionStatus, ACTIVE)
        )
        return (
            select(
                *(
                    E.c[k].label(k)  # rows read by key on every engine (:mod:`.compiled`)
                    for k in ("ExecutionID", "RunId", "LineageID", "ExecutionStatus", "EndTime")
                ),
                flag(active_child).label("has_active"),
            )
            .where(E.c.DagId == bindparam("p_dag"), E.c.TaskId.is_(None))
            .order_by(E.c.ExecutionID.desc())
            .limit(limit)
        )

    return cat.memo(f"batches_awaiting_evidence_{limit}", build)


def batches(cat: Catalog, limit: int) -> CompiledStatement:
    """:func:`batches_query` compiled once per process (every task start reads it; warmed
    before a fork by :mod:`.warm`)."""
    return compiled(cat, f"batches_awaiting_evidence_{limit}", lambda: batches_query(cat, limit))


def task_ids_txn(
    cat: Catalog, conn: Connection, row: Any, *, force: bool = False
) -> tuple[str, ...]:
    """The task ids with rows under a batch execution: ``row`` is its ExecutionID when
    ``force``, else a row of :func:`runs_awaiting_evidence_txn` (none for a settled batch)."""
    E = cat.s.Execution
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


def adopt_run_txn(cat: Catalog, conn: Connection, dag_id: str, run: RunEvidence) -> list[str]:
    """Bring the rows of one DAG run in line with Airflow's record of it (:mod:`.evidence`):
    the latest try row of each task instance first, then the batch. Idempotent; returns the
    ``BFX_ADOPTED_AIRFLOW_STATE`` lines to log once the transaction commits."""
    E = cat.s.Execution
    now = cat.clock()
    batch = conn.execute(
        cat.impl.lock(
            select(E).where(E.c.ExternalExecutionID == keys.batch_external_id(dag_id, run.run_id)),
            E,
        )
    ).first()
    if batch is None:
        return []
    where_b = f"{cat.s.qualified(E)} row ExecutionID={batch.ExecutionID}"
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
            flag(copy_landed(cat, t)).label("copy_landed"),
        ).where(t.c.ParentExecutionID == batch.ExecutionID, t.c.TaskId.is_not(None), ~newer)
    ).all()
    lines: list[str] = []
    batch_failed = (
        batch_status is ExecutionStatus.FAILED or run.dag_run_state == evidence.RUN_FAILED
    )
    Err = cat.s.ExecutionError
    for r in rows:
        slot = (str(r.TaskId), int(r.MapIndex))
        if slot not in run.task_states:
            continue
        where = f"{cat.s.qualified(E)} row ExecutionID={r.ExecutionID}"
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
    ended = evidence.adopt_batch(batch_status, run.dag_run_state, closed=batch.EndTime is not None)
    if ended is not None:
        end = apply_batch_end_txn(
            cat, conn, int(batch.ExecutionID), int(batch.LineageID), ended, now, close=True
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
