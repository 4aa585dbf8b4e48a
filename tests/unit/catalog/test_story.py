"""The 50-task story at store level, on SQLite and on a real PostgreSQL (issue acceptance).

Run 1 fails at task 48; run 2 skips the 47 finished tasks, retries task 48 and runs the last
two, in run 1's lineage; run 2 succeeds; run 3 starts fresh and runs all 50.
"""

from __future__ import annotations

import logging

import pytest

from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.machine import Run
from tests.story import FakeClock, batch_row, codes, deployed_store, run_batch, task_rows

TASKS = [f"load_table_{i:02d}" for i in range(1, 51)]
FAILING = TASKS[47]  # table 48


def test_fifty_task_story(catalog_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    store = deployed_store(catalog_url, FakeClock())

    # Run 1 fails at table 48; tables 49 and 50 never start.
    run_batch(store, "warehouse", "run_1", TASKS, fail={FAILING})
    rows1 = task_rows(store, "warehouse", "run_1")
    assert len(rows1) == 48
    assert codes(r for t, r in rows1.items() if t != FAILING) == {("S", "C"): 47}
    assert (rows1[FAILING].ExecutionStatus, rows1[FAILING].NextLoadStatus) == ("F", "R")
    batch1 = batch_row(store, "warehouse", "run_1")
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")
    assert batch1.OriginalExecutionID == batch1.ExecutionID
    assert batch1.AttemptNumber == 1

    # Run 2 resumes: 47 skip decisions, table 48 retried, two run for the first time.
    caplog.clear()
    started2 = run_batch(store, "warehouse", "run_2", TASKS)
    decisions = {t: s.status for t, s in started2.items()}
    assert sum(1 for s in decisions.values() if s is ExecutionStatus.SKIPPED) == 47
    assert all(started2[t].run is Run.SKIP for t in TASKS[:47])
    assert decisions[FAILING] is ExecutionStatus.RETRYING
    assert [decisions[t] for t in TASKS[48:]] == [ExecutionStatus.EXECUTING] * 2
    batch2 = batch_row(store, "warehouse", "run_2")
    assert batch2.OriginalExecutionID == batch1.ExecutionID
    assert batch2.LineageID == batch1.ExecutionID
    assert batch2.AttemptNumber == 2
    # Each skip names the execution that completed the work in run 1.
    for t in TASKS[:47]:
        assert started2[t].original_execution_id == rows1[t].ExecutionID
        assert started2[t].prior_execution_id == rows1[t].ExecutionID
    assert started2[FAILING].original_execution_id == rows1[FAILING].ExecutionID
    log = caplog.text
    assert log.count("[BFX_SKIP_COMPLETED]") == 47
    assert f"[BFX_BATCH_RESUME] dag=warehouse batch_execution_id={batch2.ExecutionID}" in log
    assert f"[BFX_RETRY] dag=warehouse task={FAILING}" in log

    # Run 2 succeeded: the lineage is closed, nothing waits for a restart.
    batch2 = batch_row(store, "warehouse", "run_2")
    assert (batch2.ExecutionStatus, batch2.NextLoadStatus) == ("S", "P")
    lineage = [r for r in store.executions("warehouse") if r.LineageID == batch1.ExecutionID]
    assert lineage and all(r.NextLoadStatus == "P" for r in lineage)

    # Run 3 starts fresh and runs all 50.
    started3 = run_batch(store, "warehouse", "run_3", TASKS)
    assert all(s.status is ExecutionStatus.EXECUTING for s in started3.values())
    assert len(started3) == 50
    batch3 = batch_row(store, "warehouse", "run_3")
    assert batch3.OriginalExecutionID == batch3.ExecutionID
    assert batch3.AttemptNumber == 1
    assert codes(task_rows(store, "warehouse", "run_3").values()) == {("S", "P"): 50}


def test_error_row_and_unquoted_query(catalog_url: str) -> None:
    """The failure leaves an ExecutionError row a person can join to the execution."""
    from sqlalchemy import text

    store = deployed_store(catalog_url)
    run_batch(store, "wh", "r1", ["a", "b"], fail={"b"})
    table = "bfx.ExecutionError" if store.dialect != "sqlite" else "ExecutionError"
    execution = "bfx.Execution" if store.dialect != "sqlite" else "Execution"
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT e.TaskId, x.ErrorType, x.ErrorMessage FROM {execution} e "
                f"JOIN {table} x ON x.ExecutionID = e.ExecutionID"
            )
        ).all()
    assert [tuple(r) for r in rows] == [("b", "RuntimeError", "b failed")]


def test_clear_failed_task_in_same_run_reopens_batch(catalog_url: str) -> None:
    store = deployed_store(catalog_url)
    run_batch(store, "wh", "r1", ["a", "b", "c"], fail={"b"})
    first = batch_row(store, "wh", "r1")
    # The user clears b and c in the same run: Airflow starts them with new try numbers.
    from airflow_provider_bfx.catalog.store import BatchSpec, TaskSpec

    again = store.start_task(TaskSpec(BatchSpec("wh", "r1"), "b", try_number=2))
    assert again.status is ExecutionStatus.RETRYING
    reopened = batch_row(store, "wh", "r1")
    assert reopened.ExecutionID == first.ExecutionID
    assert (reopened.ExecutionStatus, reopened.NextLoadStatus) == ("R", "C")
    a_again = store.start_task(TaskSpec(BatchSpec("wh", "r1"), "a", try_number=2))
    assert a_again.run is Run.SKIP
