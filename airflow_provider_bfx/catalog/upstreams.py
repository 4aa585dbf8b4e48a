"""The latest-row reads of one DAG run: the latest row of named tasks (the gate's upstream
check, and a later start's evidence, decision 0115), and a mapped item's latest rows by its
identity (its evidence, decision 0116). No Airflow here.

The gate restores ``all_success`` (decision 0045) from the latest catalog row of each of the
task's *upstream* tasks in this run. It used to read every task row of the run and keep the
upstreams' rows in Python, so each task start read O(run size) rows and a run of n tasks read
O(n²): millions of rows for a 2,000-item mapped task (issue 12). This query reads only the
latest row of each (task, map index) of the named tasks, through the index
``ix_execution_dag_task_run`` (``DagId``, ``TaskId``, ``RunId``, ``MapIndex``, ``ExecutionID``,
migration 0003): its cost follows the number of upstream instances, never the run's size or the
catalog's history (decision 0100).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, select

from airflow_provider_bfx.catalog.results import ExecutionRecord
from airflow_provider_bfx.catalog.txn import Catalog

#: Task ids per statement: well under SQL Server's 2,100 parameters and old SQLite's 999.
CHUNK = 500


def _latest_rows(cat: Catalog, *where: Any) -> Select[Any]:
    """The rows of ``where`` with no later row of the same slot (DAG run, task, map index):
    the anti-join walks ``ix_execution_dag_task_run``."""
    E = cat.s.Execution
    later = E.alias("later")
    newer = exists().where(
        later.c.DagId == E.c.DagId,
        later.c.RunId == E.c.RunId,
        later.c.TaskId == E.c.TaskId,
        later.c.MapIndex == E.c.MapIndex,
        later.c.ExecutionID > E.c.ExecutionID,
    )
    return select(
        E.c.ExecutionID,
        E.c.ParentExecutionID,
        E.c.OriginalExecutionID,
        E.c.LineageID,
        E.c.ExecutionStatus,
        E.c.NextLoadStatus,
        E.c.AuditID,
        E.c.AttemptNumber,
        E.c.TaskId,
        E.c.MapIndex,
        E.c.LeaseOwner,
    ).where(*where, ~newer)


def latest_task_rows_query(cat: Catalog) -> Select[Any]:
    """Latest row of each (task, map index) of the tasks ``p_tasks`` (an expanding list) in the
    DAG run ``p_dag``/``p_run``: a row with no later row of the same slot (built once per
    store; the anti-join walks the same index as the outer read)."""

    def build() -> Select[Any]:
        E = cat.s.Execution
        return _latest_rows(
            cat,
            E.c.DagId == bindparam("p_dag"),
            E.c.RunId == bindparam("p_run"),
            E.c.TaskId.in_(bindparam("p_tasks", expanding=True)),
        )

    return cat.memo("latest_task_rows", build)


def latest_item_rows_query(cat: Catalog) -> Select[Any]:
    """The latest row of each slot of the task ``p_task`` in the DAG run ``p_dag``/``p_run``
    that holds the item identity ``p_item``: the rows of a mapped item, wherever its identity
    sat in that run (items are matched by identity, not position). The outer read goes through
    ``ix_execution_lineage_package`` (lineage ``p_lineage``, the task's package, the identity),
    so it finds the item's few rows whatever the number of items; the anti-join still looks at
    every row of the slot, so a slot whose latest try holds another identity is not returned."""

    def build() -> Select[Any]:
        E, P = cat.s.Execution, cat.s.Package
        package = (
            select(P.c.PackageID)
            .where(P.c.DagId == bindparam("p_dag"), P.c.TaskId == bindparam("p_task"))
            .scalar_subquery()
        )
        return _latest_rows(
            cat,
            E.c.LineageID == bindparam("p_lineage"),
            E.c.PackageID == package,
            E.c.ItemFingerprint == bindparam("p_item"),
            E.c.DagId == bindparam("p_dag"),
            E.c.RunId == bindparam("p_run"),
            E.c.TaskId == bindparam("p_task"),
        )

    return cat.memo("latest_item_rows", build)


def latest_task_rows_txn(
    cat: Catalog, conn: Connection, dag_id: str, run_id: str, task_ids: Iterable[str]
) -> list[ExecutionRecord]:
    """The latest row of each (task, map index) of ``task_ids`` in one DAG run, as typed
    records ordered by ExecutionID. Tasks without a row are simply absent."""
    wanted = sorted(set(task_ids))
    query = latest_task_rows_query(cat)
    found: list[ExecutionRecord] = []
    for start in range(0, len(wanted), CHUNK):
        params = {"p_dag": dag_id, "p_run": run_id, "p_tasks": wanted[start : start + CHUNK]}
        found += [ExecutionRecord.of_row(row) for row in conn.execute(query, params)]
    return sorted(found, key=lambda r: r.execution_id)


def latest_item_rows_txn(
    cat: Catalog,
    conn: Connection,
    dag_id: str,
    run_id: str,
    lineage_id: int | None,
    task_id: str,
    item_fingerprint: str,
) -> list[ExecutionRecord]:
    """The latest row of each slot of ``task_id`` in one DAG run of lineage ``lineage_id`` that
    holds the item identity ``item_fingerprint``, ordered by ExecutionID: for a mapped item, the
    rows its own decision reads of that run, however many items the task has (issue 12,
    goal 2)."""
    params = {
        "p_dag": dag_id,
        "p_run": run_id,
        "p_lineage": lineage_id,
        "p_task": task_id,
        "p_item": item_fingerprint,
    }
    rows = conn.execute(latest_item_rows_query(cat), params)
    return sorted((ExecutionRecord.of_row(row) for row in rows), key=lambda r: r.execution_id)
