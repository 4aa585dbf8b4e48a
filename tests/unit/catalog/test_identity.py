"""Package identity (DESIGN.md §3): (``DagId``, ``TaskId``), never a name split on a character.

Issue 9, item 1 and 2: DAG ``a`` with the task ``b.c`` (a task group) and DAG ``a.b`` with the
task ``c`` shared one Package row under 0.1.0's ``dag_id.task_id`` names; and a task package of
two 250-character ids did not fit ``PackageName`` on PostgreSQL. Each test runs on a real SQLite
file and a real PostgreSQL database. Also here: the rows the identity reads that a person may
have edited by hand (a deleted Package row, an unknown ``ExecutionStatus``), and ``bfx reset``
after a run made while the DAG was disabled (item 4: one rule for "which execution decides").
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import select, text, update

from airflow_provider_bfx.catalog import keys, operations
from airflow_provider_bfx.catalog.codes import CorruptRowError, ExecutionStatus
from airflow_provider_bfx.catalog.keys import CatalogIdError, check_airflow_ids
from airflow_provider_bfx.catalog.machine import Run
from airflow_provider_bfx.catalog.store import (
    BatchSpec,
    CatalogStateError,
    CatalogStore,
    TaskSpec,
)
from tests.story import run_batch, task_rows


def packages(store: CatalogStore) -> dict[tuple[str, str | None], tuple[str, int]]:
    P = store.s.Package
    with store.engine.connect() as conn:
        return {(r.DagId, r.TaskId): (r.PackageName, r.IsBatch) for r in conn.execute(select(P))}


def test_dotted_dag_and_task_ids_get_a_package_each(store: CatalogStore) -> None:
    run_batch(store, "a", "r1", ["b.c", "b"])
    run_batch(store, "a.b", "r1", ["c"])
    assert packages(store) == {
        ("a", None): ("a", 1),
        ("a", "b.c"): ("a/b.c", 0),
        ("a", "b"): ("a/b", 0),
        ("a.b", None): ("a.b", 1),  # a DAG, never registered as DAG a's task b
        ("a.b", "c"): ("a.b/c", 0),
    }


def test_a_live_task_of_one_dag_never_refuses_or_aborts_the_other(store: CatalogStore) -> None:
    """0.1.0: DAG a.b's task c was refused BFX_ALREADY_RUNNING while DAG a's task b.c ran, and
    once that lease lapsed, aborted it as stale (BFX_LEASE_EXPIRED)."""
    live = store.start_task(TaskSpec(BatchSpec("a", "r1"), "b.c", lease_owner="w1:1"))
    assert live.run is Run.RUN
    other = store.start_task(TaskSpec(BatchSpec("a.b", "r1"), "c", lease_owner="w2:2"))
    assert other.run is Run.RUN and other.status is ExecutionStatus.EXECUTING
    rows = {r.ExecutionID: r for r in store.executions("a", "r1")}
    assert rows[live.execution_id].ExecutionStatus == "E"  # untouched


def test_a_dag_resumes_from_its_own_rows_only(store: CatalogStore) -> None:
    run_batch(store, "a", "r1", ["b.c", "load"], fail={"load"})
    run_batch(store, "a.b", "r1", ["c", "d"], fail={"d"})
    c = store.start_task(TaskSpec(BatchSpec("a.b", "r2"), "c"))
    assert c.run is Run.SKIP
    assert c.prior_execution_id == task_rows(store, "a.b", "r1")["c"].ExecutionID
    bc = store.start_task(TaskSpec(BatchSpec("a", "r2"), "b.c"))
    assert bc.prior_execution_id == task_rows(store, "a", "r1")["b.c"].ExecutionID


def test_reset_of_a_dotted_dag_changes_no_row_of_another_dag(store: CatalogStore) -> None:
    run_batch(store, "a", "r1", ["b", "load"], fail={"load"})
    run_batch(store, "a.b", "r1", ["c", "d"], fail={"d"})
    before = {r.ExecutionID: tuple(r) for r in store.executions("a")}
    operations.reset(store, "a.b")
    operations.reset(store, "a.b", "c")
    assert {r.ExecutionID: tuple(r) for r in store.executions("a")} == before
    # DAG a still resumes: its completed task b skips.
    assert store.start_task(TaskSpec(BatchSpec("a", "r2"), "b")).run is Run.SKIP


@pytest.mark.parametrize("task_id", ["t" * 250, "ü" * 250, "任" * 250])
def test_airflow_longest_ids_fit_every_column(store: CatalogStore, task_id: str) -> None:
    dag_id = "d" + "é" * 249
    run_id = "manual__" + "r" * 242
    started = store.start_task(TaskSpec(BatchSpec(dag_id, run_id), task_id))
    assert started.run is Run.RUN
    name, is_batch = packages(store)[(dag_id, task_id)]
    assert (name, is_batch) == (f"{dag_id}/{task_id}", 0) and len(name) == 501
    (row,) = [r for r in store.executions(dag_id, run_id) if r.TaskId == task_id]
    assert row.ExternalExecutionID == f"{dag_id}/{run_id}/{task_id}/-1/1"


def test_an_id_longer_than_airflow_allows_is_refused_before_any_row(store: CatalogStore) -> None:
    with pytest.raises(CatalogIdError, match="251 characters long.*at most 250"):
        store.start_task(TaskSpec(BatchSpec("d", "r1"), "t" * 251))
    assert store.executions("d") == [] and packages(store) == {}


def test_sql_server_counts_utf16_units_and_names_the_limit() -> None:
    """No SQL Server here: the rule is checked as the store applies it for ``mssql``."""
    outside_bmp = "\U00020000" * 126  # a CJK ideograph of plane 2: 2 UTF-16 units each
    check_airflow_ids("postgresql", task_id=outside_bmp)  # 126 characters: fine
    with pytest.raises(CatalogIdError, match="252 UTF-16 code units on SQL Server"):
        check_airflow_ids("mssql", task_id=outside_bmp)
    with pytest.raises(CatalogIdError, match="contains '/'"):
        check_airflow_ids("sqlite", dag_id="a/b")
    check_airflow_ids("sqlite", run_id="manual/x")  # a run_id's '/' is harmless


def test_package_name_is_derived_from_the_identity() -> None:
    assert keys.package_name("a.b") == "a.b"
    assert keys.package_name("a.b", "c.d") == "a.b/c.d"


# -- rows edited by hand ----------------------------------------------------------------------


def _without_constraints(store: CatalogStore, sql: str) -> None:
    """Run ``sql`` as a person would with the catalog's constraints out of the way: the
    ``sqlite3`` shell (foreign keys and CHECKs off) or, on PostgreSQL, after dropping them."""
    if store.dialect == "sqlite":
        path = store.engine.url.database
        assert path
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA ignore_check_constraints=ON")
            conn.execute(sql.replace("{p}", ""))
            conn.commit()
        finally:
            conn.close()
        return
    with store.engine.begin() as conn:
        for table, constraint in (
            ("execution", "execution_packageid_fkey"),
            ("package", "package_parentpackageid_fkey"),
            ("execution", "ck_execution_executionstatus"),
        ):
            conn.execute(text(f"ALTER TABLE bfx.{table} DROP CONSTRAINT IF EXISTS {constraint}"))
        conn.execute(text(sql.replace("{p}", "bfx.")))


def test_a_deleted_package_row_is_named_not_recreated(store: CatalogStore) -> None:
    run_batch(store, "dag", "r1", ["extract", "load"], fail={"load"})
    (pid,) = [r.PackageID for r in store.executions("dag", "r1") if r.TaskId == "extract"]
    _without_constraints(store, f"DELETE FROM {{p}}Package WHERE PackageID = {pid}")
    with pytest.raises(CatalogStateError) as caught:
        store.start_task(TaskSpec(BatchSpec("dag", "r2"), "extract"))
    message = str(caught.value)
    assert "no row for DAG 'dag' task 'extract'" in message
    assert f"PackageID={pid}" in message and "deleted by hand" in message
    assert ("dag", "extract") not in packages(store)  # not recreated


def test_a_hand_edited_status_is_named_not_passed_over(store: CatalogStore) -> None:
    run_batch(store, "dag", "r1", ["extract", "load"], fail={"load"})
    row = task_rows(store, "dag", "r1")["extract"]
    _without_constraints(
        store,
        f"UPDATE {{p}}Execution SET ExecutionStatus = 'X' WHERE ExecutionID = {row.ExecutionID}",
    )
    with pytest.raises(CorruptRowError) as caught:
        store.start_task(TaskSpec(BatchSpec("dag", "r2"), "extract"))
    assert f"ExecutionID={row.ExecutionID}" in str(caught.value)
    assert "ExecutionStatus='X'" in str(caught.value)
    with pytest.raises(CorruptRowError, match=f"ExecutionID={row.ExecutionID}"):
        operations.plan(store, "dag")


# -- which execution decides: one rule for start, plan and reset --------------------------------


def _disabled_run_after_a_failure(store: CatalogStore) -> None:
    run_batch(store, "dag", "r1", ["extract", "load"], fail={"load"})
    store.set_package("dag", enabled=False)
    run_batch(store, "dag", "r2", ["extract", "load"])  # every task skipped: C/P rows
    store.set_package("dag", enabled=True)


def test_reset_after_a_disabled_run_makes_the_next_run_fresh(store: CatalogStore) -> None:
    _disabled_run_after_a_failure(store)
    assert operations.plan(store, "dag").resumes  # before the reset: r3 would resume
    result = operations.reset(store, "dag")
    assert result.changed_rows >= 1
    plan = operations.plan(store, "dag")
    assert not plan.resumes
    started = store.start_task(TaskSpec(BatchSpec("dag", "r3"), "extract"))
    assert started.run is Run.RUN and started.status is ExecutionStatus.EXECUTING


def test_reset_of_a_task_after_a_disabled_run_reruns_it(store: CatalogStore) -> None:
    _disabled_run_after_a_failure(store)
    result = operations.reset(store, "dag", "extract")
    assert result.changed_rows == 1
    (planned,) = [t for t in operations.plan(store, "dag").tasks if t.task_id == "extract"]
    started = store.start_task(TaskSpec(BatchSpec("dag", "r3"), "extract"))
    assert started.run is Run.RUN and started.status is ExecutionStatus.RETRYING
    assert planned.status is ExecutionStatus.RETRYING  # the plan said so before the run


def test_plan_names_the_execution_the_start_then_uses(store: CatalogStore) -> None:
    _disabled_run_after_a_failure(store)
    planned = {t.task_id: t for t in operations.plan(store, "dag").tasks}
    for task_id in ("extract", "load"):
        started = store.start_task(TaskSpec(BatchSpec("dag", "r3"), task_id))
        assert planned[task_id].prior_execution_id == started.prior_execution_id, task_id
        assert planned[task_id].status is started.status, task_id


def test_set_package_is_keyed_on_the_identity(store: CatalogStore) -> None:
    run_batch(store, "a.b", "r1", ["c"])
    store.set_package("a", "b.c", enabled=False)  # DAG a's task b.c: not DAG a.b's task c
    P = store.s.Package
    with store.engine.connect() as conn:
        enabled = dict(conn.execute(select(P.c.PackageName, P.c.IsEnabled)).tuples().all())
    assert enabled["a.b/c"] == 1 and enabled["a/b.c"] == 0
    with store.engine.begin() as conn:
        conn.execute(update(P).where(P.c.PackageName == "a/b.c").values(IsEnabled=1))


def test_reset_of_a_task_after_a_successful_run_writes_nothing(store: CatalogStore) -> None:
    """Found by the property model: a closed lineage keeps every instruction at P, and the next
    run is fresh anyway, so a task reset there changes no row."""
    run_batch(store, "dag", "r1", ["extract", "load"])
    before = {r.ExecutionID: tuple(r) for r in store.executions("dag")}
    result = operations.reset(store, "dag", "load")
    assert (result.changed_rows, result.discarded_checkpoints) == (0, 0)
    assert "runs load in full" in result.message
    assert {r.ExecutionID: tuple(r) for r in store.executions("dag")} == before
    started = store.start_task(TaskSpec(BatchSpec("dag", "r2"), "load"))
    assert started.run is Run.RUN and started.status is ExecutionStatus.EXECUTING
