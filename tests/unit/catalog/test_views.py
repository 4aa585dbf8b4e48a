"""What the recovery view reads (``catalog/views.py``), against real catalogs (SQLite and
PostgreSQL): the rows it shows are the rows the store wrote, pages are bounded and chained, and
the view of a resumed batch names the execution each skip reused."""

from __future__ import annotations

import pytest

from airflow_provider_bfx.catalog import keys, operations, views
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, TaskSpec
from tests.story import batch_row, deployed_store, run_batch

TASKS = ["extract", "load_customer", "load_orders", "merge"]


def _failed_then_resumed(url: str):  # type: ignore[no-untyped-def]
    """Run 1: extract S; load_customer lands its copy, counts rows, fails (D); load_orders
    fails (R); merge never starts. Run 2 resumes and fails load_orders again."""
    store = deployed_store(url)
    batch = BatchSpec("wh", "run_1")
    ok = store.start_task(TaskSpec(batch, "extract"))
    store.end_task(ok.execution_id, TaskOutcome.SUCCESS)
    cust = store.start_task(TaskSpec(batch, "load_customer"))
    store.write_checkpoint(
        execution_id=cust.execution_id, scope_key=cust.scope_key, node=keys.COPY_NODE, payload={}
    )
    store.log_row_counts(cust.execution_id, [("customer", "inserted", 42)])
    store.end_task(cust.execution_id, TaskOutcome.FAILED_TRY, error_message="compute failed")
    orders = store.start_task(TaskSpec(batch, "load_orders"))
    store.end_task(orders.execution_id, TaskOutcome.FINAL_FAILURE, error_message="copy failed")
    store.end_batch("wh", "run_1", succeeded=False)
    return store, ok, cust, orders


def test_overview_shows_the_last_batch_and_what_waits_for_a_restart(catalog_url: str) -> None:
    store, ok, cust, orders = _failed_then_resumed(catalog_url)
    run_batch(store, "other", "r1", ["a", "b"])  # a DAG whose last batch succeeded
    (wh,) = [o for o in views.overview(store) if o.dag_id == "wh"]
    assert wh.last_batch is not None
    assert (wh.last_batch.status, wh.last_batch.run_id, wh.last_batch.attempt) == ("F", "run_1", 1)
    assert wh.last_batch.task_counts == {"F": 2, "S": 1}
    waiting = {t.task_id: (t.next_load_status, t.audit_id) for t in wh.waiting}
    # D with the audit ID the compute-only restart will reuse; R; the finished extract is not
    # waiting, the never-started merge is not in the catalog.
    assert waiting == {"load_customer": ("D", cust.audit_id), "load_orders": ("R", orders.audit_id)}
    (other,) = [o for o in views.overview(store) if o.dag_id == "other"]
    assert other.waiting == [] and other.last_batch and other.last_batch.status == "S"
    # Only the DAGs asked for (the ones a user may read), and none for an empty set.
    assert [o.dag_id for o in views.overview(store, {"other"})] == ["other"]
    assert views.overview(store, set()) == []


def test_routed_dags_are_paged_by_id(sqlite_url: str) -> None:
    store = deployed_store(sqlite_url)
    for dag in ("c", "a", "b"):
        run_batch(store, dag, "r1", ["t"])
    ids = views.routed_dag_ids(store)
    assert ids == ["a", "b", "c"]
    assert views.page_of(ids, 2, None) == (["a", "b"], "b")
    assert views.page_of(ids, 2, "b") == (["c"], None)
    assert views.page_of(["x"], 5, None) == (["x"], None)


def test_batches_are_paginated_newest_first(sqlite_url: str) -> None:
    store = deployed_store(sqlite_url)
    for n in range(1, 6):
        run_batch(store, "wh", f"run_{n}", TASKS)
    first = views.batch_page(store, "wh", limit=2)
    assert [b.run_id for b in first.batches] == ["run_5", "run_4"]
    second = views.batch_page(store, "wh", limit=2, before=first.next_before)
    assert [b.run_id for b in second.batches] == ["run_3", "run_2"]
    last = views.batch_page(store, "wh", limit=2, before=second.next_before)
    assert [b.run_id for b in last.batches] == ["run_1"] and last.next_before is None
    assert views.batch_page(store, "nope").batches == []
    with pytest.raises(ValueError, match="limit must be between 1 and 200"):
        views.batch_page(store, "wh", limit=201)


def test_batch_detail_names_the_reused_execution_and_what_each_row_left(catalog_url: str) -> None:
    store, ok, cust, orders = _failed_then_resumed(catalog_url)
    run_batch(store, "wh", "run_2", TASKS, fail={"load_orders"})
    b2 = batch_row(store, "wh", "run_2")
    detail = views.batch_detail(store, b2.ExecutionID)
    assert detail is not None and not detail.truncated
    assert (detail.batch.attempt, detail.batch.lineage_id) == (
        2,
        batch_row(store, "wh", "run_1").ExecutionID,
    )
    rows = {t.task_id: t for t in detail.tasks}
    assert (rows["extract"].status, rows["extract"].decided_by) == ("C", ok.execution_id)
    # The compute-only restart ended S; it reused the landed data's audit ID.
    assert (rows["load_customer"].status, rows["load_customer"].decided_by) == (
        "S",
        cust.execution_id,
    )
    assert rows["load_customer"].audit_id == cust.audit_id != rows["load_customer"].execution_id
    assert rows["load_orders"].decided_by == orders.execution_id
    assert [e.message for e in rows["load_orders"].errors] == ["load_orders failed"]
    assert "merge" not in rows  # the run stopped at load_orders
    assert detail.batch.task_counts == {"C": 1, "F": 1, "S": 1}

    run1 = views.batch_detail(store, batch_row(store, "wh", "run_1").ExecutionID)
    assert run1 is not None
    first = {t.task_id: t for t in run1.tasks}
    assert first["load_customer"].checkpoints == {"NODE_OUTPUT": 1}
    assert [(r.object_name, r.count_type, r.rows) for r in first["load_customer"].row_counts] == [
        ("customer", "inserted", 42)
    ]
    assert first["extract"].decided_by is None  # nothing before it in the lineage
    assert views.batch_detail(store, ok.execution_id) is None  # a task row is not a batch
    assert views.batch_dag_id(store, b2.ExecutionID) == "wh"
    assert views.batch_dag_id(store, ok.execution_id) is None


def test_task_executions_cross_runs_and_the_timeline_draws_attempts(catalog_url: str) -> None:
    store, _, _, orders = _failed_then_resumed(catalog_url)
    run_batch(store, "wh", "run_2", TASKS)
    rows, batches, cursor = views.task_executions(store, "wh", "load_orders")
    assert [(r.attempt, r.status) for r in rows] == [(2, "S"), (1, "F")]
    assert rows[1].execution_id == orders.execution_id and rows[0].decided_by == orders.execution_id
    assert {b.run_id for b in batches.values()} == {"run_1", "run_2"} and cursor is None
    page, _, cursor = views.task_executions(store, "wh", "load_orders", limit=1)
    assert len(page) == 1 and cursor == page[0].execution_id

    lineage = batch_row(store, "wh", "run_1").ExecutionID
    t = views.timeline(store, "wh", lineage)
    assert t is not None and [a.attempt for a in t.attempts] == [1, 2]
    grid = {label: {k: c.status for k, c in cells.items()} for label, cells in t.tasks}
    # merge first ran in attempt 2: its column is the batch's attempt, not its own count.
    assert grid == {
        "extract": {1: "S", 2: "C"},
        "load_customer": {1: "F", 2: "S"},
        "load_orders": {1: "F", 2: "S"},
        "merge": {2: "S"},
    }
    assert views.timeline(store, "another_dag", lineage) is None


def test_plan_over_airflow_task_ids_and_the_reset_preview(sqlite_url: str) -> None:
    store, *_ = _failed_then_resumed(sqlite_url)
    p = operations.plan(store, "wh", task_ids=TASKS)
    actions = {t.task_id: t.action for t in p.tasks}
    assert actions == {
        "extract": "skip",
        "load_customer": "compute-only restart",
        "load_orders": "retry",
        "merge": "run",  # never started: known only to Airflow
    }
    assert "runs all 4 task(s)" in operations.reset_preview(p)
    preview = operations.reset_preview(p, "load_customer")
    assert "resumes lineage" in preview and "runs load_customer in full" in preview
    assert "1 retry, 1 run, 1 skip" in preview
    never = operations.plan(store, "new_dag", task_ids=["a", "b"])
    assert not never.known and [t.action for t in never.tasks] == ["run", "run"]
