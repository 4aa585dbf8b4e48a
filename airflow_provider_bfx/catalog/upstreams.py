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

Both reads are compiled once per process (:mod:`.compiled`), so a task process does not compile
them again (decision 0119). The list of task ids is not an expanding parameter (whose text is
rendered per call): a statement has a fixed number of task-id parameters, a power of two, and a
shorter list is padded with its last id (``IN`` does not care); :mod:`.warm` compiles the small
ones before the fork.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, select

from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.results import ExecutionRecord
from airflow_provider_bfx.catalog.txn import Catalog

#: Task ids per statement: well under SQL Server's 2,100 parameters and old SQLite's 999.
CHUNK = 512

#: The columns an :class:`ExecutionRecord` is read from, labelled by key (rows are read by key
#: on every engine: :mod:`.compiled`).
_RECORD = (
    "ExecutionID",
    "ParentExecutionID",
    "OriginalExecutionID",
    "LineageID",
    "ExecutionStatus",
    "NextLoadStatus",
    "AuditID",
    "AttemptNumber",
    "TaskId",
    "MapIndex",
    "LeaseOwner",
)


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
    return select(*(E.c[k].label(k) for k in _RECORD)).where(*where, ~newer)


def task_slots(count: int) -> int:
    """How many task-id parameters the statement that reads ``count`` task ids has: the
    smallest power of two that holds them (at most :data:`CHUNK`), so that a process compiles
    a handful of statements, not one per list length."""
    if not 0 < count <= CHUNK:
        raise ValueError(f"{count} task ids: between 1 and {CHUNK} per statement")
    return 1 << (count - 1).bit_length()


def task_params(task_ids: list[str]) -> dict[str, str]:
    """The task-id parameters of :func:`latest_task_rows` for ``task_ids`` (1 to
    :data:`CHUNK` of them), padded with the last id to :func:`task_slots`."""
    padded = task_ids + task_ids[-1:] * (task_slots(len(task_ids)) - len(task_ids))
    return {f"p_task_{i}": task_id for i, task_id in enumerate(padded)}


def latest_task_rows_query(cat: Catalog, slots: int = 1) -> Select[Any]:
    """Latest row of each (task, map index) of the tasks ``p_task_0`` .. ``p_task_<slots-1>``
    in the DAG run ``p_dag``/``p_run``: a row with no later row of the same slot (built once per
    process; the anti-join walks the same index as the outer read)."""

    def build() -> Select[Any]:
        E = cat.s.Execution
        return _latest_rows(
            cat,
            E.c.DagId == bindparam("p_dag"),
            E.c.RunId == bindparam("p_run"),
            E.c.TaskId.in_([bindparam(f"p_task_{i}") for i in range(slots)]),
        )

    return cat.memo(f"latest_task_rows_{slots}", build)


def latest_task_rows(cat: Catalog, slots: int) -> CompiledStatement:
    """:func:`latest_task_rows_query` compiled once per process (:mod:`.warm` compiles the
    small ones before a fork)."""
    return compiled(cat, f"latest_task_rows_{slots}", lambda: latest_task_rows_query(cat, slots))


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


def latest_item_rows(cat: Catalog) -> CompiledStatement:
    """:func:`latest_item_rows_query` compiled once per process."""
    return compiled(cat, "latest_item_rows", lambda: latest_item_rows_query(cat))


def latest_task_rows_txn(
    cat: Catalog, conn: Connection, dag_id: str, run_id: str, task_ids: Iterable[str]
) -> list[ExecutionRecord]:
    """The latest row of each (task, map index) of ``task_ids`` in one DAG run, as typed
    records ordered by ExecutionID. Tasks without a row are simply absent."""
    wanted = sorted(set(task_ids))
    found: list[ExecutionRecord] = []
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        params = {"p_dag": dag_id, "p_run": run_id, **task_params(chunk)}
        rows = latest_task_rows(cat, task_slots(len(chunk))).rows(conn, params)
        found += [ExecutionRecord.of_row(row) for row in rows]
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
    rows = latest_item_rows(cat).rows(conn, params)
    return sorted((ExecutionRecord.of_row(row) for row in rows), key=lambda r: r.execution_id)
