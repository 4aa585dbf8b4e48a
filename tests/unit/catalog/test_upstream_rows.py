"""The gate's upstream read (``CatalogStore.latest_task_records``): only the named tasks' latest
rows of one DAG run, at a cost that does not grow with the run (issue 12, decision 0100).

The cost is measured, not assumed: on SQLite the number of virtual-machine instructions the
statement executes (``set_progress_handler``) is the work the database did, whatever the clock
says. Reading every row of the run (what the gate did before) grows with the run; the indexed
read must not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.catalog.txn import utcnow
from airflow_provider_bfx.catalog.upstreams import CHUNK, task_slots
from tests.story import deployed_store

DAG = "upstream_dag"


@pytest.fixture
def store(catalog_url: str) -> Iterator[CatalogStore]:
    deployed = deployed_store(catalog_url, clock=utcnow)
    try:
        yield deployed
    finally:
        deployed.engine.dispose()


def run_tasks(store: CatalogStore, run_id: str, tasks: int, *, mapped: int = 0) -> None:
    """A DAG run of ``tasks`` tasks ``t0000``..., each started and ended successfully, plus a
    mapped task ``m`` of ``mapped`` items."""
    batch = BatchSpec(DAG, run_id)
    for i in range(tasks):
        started = store.start_task(TaskSpec(batch, f"t{i:04d}"))
        store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    for i in range(mapped):
        started = store.start_task(TaskSpec(batch, "m", map_index=i, item_fingerprint=f"i{i}"))
        store.end_task(started.execution_id, TaskOutcome.SUCCESS)


def test_latest_row_of_each_named_task_and_map_index(store: CatalogStore) -> None:
    batch = BatchSpec(DAG, "r1")
    first = store.start_task(TaskSpec(batch, "a"))
    store.end_task(first.execution_id, TaskOutcome.FAILED_TRY)
    second = store.start_task(TaskSpec(batch, "a", try_number=2))  # the latest try decides
    store.end_task(second.execution_id, TaskOutcome.SUCCESS)
    items = [
        store.start_task(TaskSpec(batch, "m", map_index=i, item_fingerprint=f"i{i}"))
        for i in range(3)
    ]
    other = store.start_task(TaskSpec(batch, "not_asked"))
    elsewhere = store.start_task(TaskSpec(BatchSpec(DAG, "r2"), "a"))  # another run

    found = store.latest_task_records(DAG, "r1", {"a", "m", "never_ran"})

    assert [(r.task_id, r.map_index, r.execution_id) for r in found] == [
        ("a", -1, second.execution_id),
        *[("m", i, items[i].execution_id) for i in range(3)],
    ]
    assert found[0].status_code == "S" and found[0].lease_owner is not None
    seen = {r.execution_id for r in found}
    assert other.execution_id not in seen and elsewhere.execution_id not in seen
    assert store.latest_task_records(DAG, "r1", []) == []


def test_a_list_of_any_length_reads_each_task_once(store: CatalogStore) -> None:
    """The read has a power-of-two number of task-id parameters and pads a shorter list with
    its last id (decision 0119): every length from 1 to 9 returns each named task's latest
    row exactly once, and nothing of a task not named."""
    batch = BatchSpec(DAG, "lengths")
    rows = {}
    for i in range(10):
        started = store.start_task(TaskSpec(batch, f"t{i:04d}"))
        rows[f"t{i:04d}"] = started.execution_id
    for n in range(1, 10):
        asked = [f"t{i:04d}" for i in range(0, 2 * n, 2)]  # some of them never ran
        found = store.latest_task_records(DAG, "lengths", asked)
        assert [r.execution_id for r in found] == [rows[t] for t in asked if t in rows], n
    assert [task_slots(n) for n in (1, 2, 3, 4, 5, 8, 9, 500, CHUNK)] == [
        1,
        2,
        4,
        4,
        8,
        8,
        16,
        512,
        512,
    ]
    for wrong in (0, CHUNK + 1):
        with pytest.raises(ValueError, match="task ids"):
            task_slots(wrong)


def test_many_upstreams_are_read_in_chunks(store: CatalogStore) -> None:
    """More task ids than one statement may bind on SQL Server (2,100) or old SQLite (999)."""
    batch = BatchSpec(DAG, "wide")
    started = [store.start_task(TaskSpec(batch, f"t{i:04d}")) for i in range(3)]
    asked = [f"t{i:04d}" for i in range(2_500)]
    found = store.latest_task_records(DAG, "wide", asked)
    assert [r.execution_id for r in found] == [s.execution_id for s in started]


def vm_steps(store: CatalogStore, read: Callable[[], Any]) -> int:
    """SQLite virtual-machine instructions executed by ``read`` (counted in steps of 10)."""
    raw = store.engine.raw_connection()  # the pool's one connection (SQLite file: QueuePool)
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    raw.driver_connection.set_progress_handler(tick, 10)  # type: ignore[union-attr]
    raw.close()  # back to the pool, handler kept: the read below checks it out again
    try:
        read()
    finally:
        raw = store.engine.raw_connection()
        raw.driver_connection.set_progress_handler(None, 10)  # type: ignore[union-attr]
        raw.close()
    return steps[0] * 10


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_the_read_does_not_grow_with_the_run(store: CatalogStore) -> None:
    """Two upstreams of a task in a run of 20 tasks and in a run of 600 tasks plus a 300-item
    mapped task: the same work. Reading the whole run (``task_records``) is shown growing by the
    same measure, so the measure would catch the old read."""
    run_tasks(store, "small", 20)
    run_tasks(store, "large", 600, mapped=300)
    upstream = {"t0003", "t0010"}
    with store.engine.connect() as conn:  # one connection: the handler sees every statement
        conn.execute(text("SELECT 1"))

    def steps(run_id: str, read: str) -> int:
        if read == "latest":
            return vm_steps(store, lambda: store.latest_task_records(DAG, run_id, upstream))
        return vm_steps(store, lambda: store.task_records(DAG, run_id))

    small, large = steps("small", "latest"), steps("large", "latest")
    assert large <= 1.2 * small, (small, large)
    whole_small, whole_large = steps("small", "whole"), steps("large", "whole")
    assert whole_large > 10 * whole_small, (whole_small, whole_large)
    assert [r.task_id for r in store.latest_task_records(DAG, "large", upstream)] == sorted(
        upstream
    )


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_the_read_seeks_the_dag_run_task_index(store: CatalogStore) -> None:
    """SQLite's plan for the read, as sent: a search of ``ix_execution_dag_task_run`` on DagId,
    RunId and TaskId for the outer read and for the "no later row" probe, never a scan."""
    run_tasks(store, "r", 3)
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        sent.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.latest_task_records(DAG, "r", {"t0001", "t0002"})
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    (statement, params), *_ = [(s, p) for s, p in sent if s.lstrip().upper().startswith("SELECT")]
    with store.engine.connect() as conn:
        plan = [
            str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
        ]
    searches = [p for p in plan if "ix_execution_dag_task_run" in p]
    assert len(searches) == 2, plan
    assert all(p.startswith("SEARCH") and "TaskId=?" in p for p in searches), plan
    assert not any(p.startswith("SCAN") for p in plan), plan
