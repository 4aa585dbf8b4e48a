"""The batch start's one facts query (decision 0105) reads what the separate reads before it
read: here the paths the other suites reach only end to end (nested batches), on SQLite and on
a real PostgreSQL."""

from __future__ import annotations

import pytest

from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStateError, CatalogStore, TaskSpec
from tests.story import batch_row


def _inner_run(store: CatalogStore, run_id: str, parent: int, *, fail: bool) -> int:
    """A run of the nested DAG ``inner``, triggered by task execution ``parent``."""
    started = store.start_task(
        TaskSpec(BatchSpec("inner", run_id, parent_execution_id=parent), "w")
    )
    outcome = TaskOutcome.FINAL_FAILURE if fail else TaskOutcome.SUCCESS
    store.end_task(started.execution_id, outcome)
    store.end_batch("inner", run_id, succeeded=not fail)
    return started.batch_execution_id


def test_a_nested_batch_resumes_the_batch_its_parents_lineage_triggered(
    store: CatalogStore,
) -> None:
    """Another trigger of the same DAG in between (another parent task) does not hide the
    batch the resumed parent task's lineage triggered (docs/decisions/0070)."""
    o1 = BatchSpec("outer", "o1")
    trigger = store.start_task(TaskSpec(o1, "trigger"))
    failed_inner = _inner_run(store, "i1", trigger.execution_id, fail=True)
    store.end_task(trigger.execution_id, TaskOutcome.FINAL_FAILURE)
    other = store.start_task(TaskSpec(o1, "other"))
    _inner_run(store, "i2", other.execution_id, fail=False)  # the latest batch of inner
    store.end_task(other.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("outer", "o1", succeeded=False)

    again = store.start_task(TaskSpec(BatchSpec("outer", "o2"), "trigger"))
    assert again.status is ExecutionStatus.RETRYING
    assert again.original_execution_id == trigger.execution_id
    resumed = store.start_task(
        TaskSpec(BatchSpec("inner", "i3", parent_execution_id=again.execution_id), "w")
    )
    inner = batch_row(store, "inner", "i3")
    assert (inner.ExecutionStatus, inner.AttemptNumber) == ("R", 2)
    assert inner.OriginalExecutionID == failed_inner
    assert inner.ParentExecutionID == again.execution_id
    assert resumed.status is ExecutionStatus.RETRYING


def test_a_top_level_batch_ignores_triggered_ones_only_by_the_deciding_rule(
    store: CatalogStore,
) -> None:
    """Without a parent the latest batch of the DAG decides, triggered or not."""
    trigger = store.start_task(TaskSpec(BatchSpec("outer", "o1"), "trigger"))
    failed_inner = _inner_run(store, "i1", trigger.execution_id, fail=True)
    store.start_task(TaskSpec(BatchSpec("inner", "manual"), "w"))
    inner = batch_row(store, "inner", "manual")
    assert (inner.ExecutionStatus, inner.OriginalExecutionID) == ("R", failed_inner)


@pytest.mark.parametrize("kind", ["missing", "batch"])
def test_a_parent_that_is_no_task_execution_is_named(store: CatalogStore, kind: str) -> None:
    first = store.start_task(TaskSpec(BatchSpec("outer", "o1"), "t"))
    parent = first.batch_execution_id if kind == "batch" else 999
    with pytest.raises(CatalogStateError) as err:
        store.start_task(TaskSpec(BatchSpec("inner", "i1", parent_execution_id=parent), "w"))
    said = str(err.value)
    assert f"parent_execution_id={parent}" in said
    assert ("does not exist" in said) is (kind == "missing")
    assert ("is a batch execution (a DAG run of 'outer')" in said) is (kind == "batch")
    assert [r for r in store.executions("inner")] == []
