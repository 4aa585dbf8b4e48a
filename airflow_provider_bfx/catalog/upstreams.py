"""The read behind the gate's upstream check: the latest row of named tasks in one DAG run.
No Airflow here.

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


def latest_task_rows_query(cat: Catalog) -> Select[Any]:
    """Latest row of each (task, map index) of the tasks ``p_tasks`` (an expanding list) in the
    DAG run ``p_dag``/``p_run``: a row with no later row of the same slot (built once per
    store; the anti-join walks the same index as the outer read)."""

    def build() -> Select[Any]:
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
        ).where(
            E.c.DagId == bindparam("p_dag"),
            E.c.RunId == bindparam("p_run"),
            E.c.TaskId.in_(bindparam("p_tasks", expanding=True)),
            ~newer,
        )

    return cat.memo("latest_task_rows", build)


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
