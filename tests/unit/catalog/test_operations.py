"""``bfx plan``, ``bfx history``, ``bfx reset`` and ``bfx recover`` against real catalogs."""

from __future__ import annotations

import subprocess
import sys

from airflow_provider_bfx.catalog import keys, operations
from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, TaskSpec
from airflow_provider_bfx.cli.main import main
from tests.story import FakeClock, batch_row, deployed_store, run_batch

TASKS = ["extract", "load_customer", "load_orders", "merge"]


def _failed_run_with_landed_copy(url: str, clock: FakeClock | None = None):  # type: ignore[no-untyped-def]
    """Run 1: extract succeeds; load_customer lands its copy then fails in compute (D);
    load_orders fails before landing (R); merge never starts."""
    store = deployed_store(url, clock)
    batch = BatchSpec("wh", "run_1")
    ok = store.start_task(TaskSpec(batch, "extract"))
    store.end_task(ok.execution_id, TaskOutcome.SUCCESS)
    cust = store.start_task(TaskSpec(batch, "load_customer"))
    store.write_checkpoint(
        execution_id=cust.execution_id, scope_key=cust.scope_key, node=keys.COPY_NODE, payload={}
    )
    store.end_task(cust.execution_id, TaskOutcome.FAILED_TRY, error_message="compute failed")
    orders = store.start_task(TaskSpec(batch, "load_orders"))
    store.end_task(orders.execution_id, TaskOutcome.FINAL_FAILURE, error_message="copy failed")
    store.end_batch("wh", "run_1", succeeded=False)
    return store, ok, cust, orders


def test_plan_predicts_each_decision_and_changes_nothing(catalog_url: str) -> None:
    store, ok, cust, orders = _failed_run_with_landed_copy(catalog_url)
    before = [tuple(r) for r in store.executions("wh")]
    p = operations.plan(store, "wh")
    assert [tuple(r) for r in store.executions("wh")] == before  # read-only
    assert (
        p.resumes and p.attempt == 2 and p.lineage_id == batch_row(store, "wh", "run_1").ExecutionID
    )
    by_task = {t.task_id: t for t in p.tasks}
    assert by_task["extract"].action == "skip"
    assert by_task["extract"].prior_execution_id == ok.execution_id
    assert by_task["load_customer"].action == "compute-only restart"
    assert by_task["load_customer"].audit_id == cust.audit_id
    assert by_task["load_orders"].action == "retry"

    # The plan is what the next run does.
    batch = BatchSpec("wh", "run_2")
    assert store.start_task(TaskSpec(batch, "extract")).run is Run.SKIP
    d = store.start_task(TaskSpec(batch, "load_customer"))
    assert (d.status, d.audit_id) == (ExecutionStatus.COMPUTE_ONLY, cust.audit_id)
    assert store.start_task(TaskSpec(batch, "load_orders")).status is ExecutionStatus.RETRYING


def test_plan_with_full_rerun_runs_everything(catalog_url: str) -> None:
    store, *_ = _failed_run_with_landed_copy(catalog_url)
    p = operations.plan(store, "wh", full_rerun=True)
    assert not p.resumes
    assert {t.action for t in p.tasks} == {"run"}


def test_reset_task_turns_compute_only_into_full_rerun_and_drops_checkpoints(
    catalog_url: str,
) -> None:
    store, _, cust, _ = _failed_run_with_landed_copy(catalog_url)
    result = operations.reset(store, "wh", "load_customer")
    assert result.changed_rows == 1 and result.discarded_checkpoints == 1
    started = store.start_task(TaskSpec(BatchSpec("wh", "run_2"), "load_customer"))
    assert started.status is ExecutionStatus.RETRYING
    assert started.audit_id == started.execution_id != cust.audit_id
    # Other tasks still resume.
    assert store.start_task(TaskSpec(BatchSpec("wh", "run_2"), "extract")).run is Run.SKIP


def test_reset_dag_starts_a_fresh_lineage(catalog_url: str) -> None:
    store, *_ = _failed_run_with_landed_copy(catalog_url)
    operations.reset(store, "wh")
    assert not operations.plan(store, "wh").resumes
    started = run_batch(store, "wh", "run_2", TASKS)
    assert all(s.status is ExecutionStatus.EXECUTING for s in started.values())


def test_history_lists_lineages_newest_first(sqlite_url: str) -> None:
    store = deployed_store(sqlite_url)
    run_batch(store, "wh", "run_1", TASKS, fail={"load_orders"})
    run_batch(store, "wh", "run_2", TASKS)
    rows = operations.history(store, "wh")
    assert [(b.run_id, b.attempt, b.status) for b in rows] == [("run_2", 2, "S"), ("run_1", 1, "F")]
    assert rows[0].lineage_id == rows[1].lineage_id == rows[1].execution_id
    assert rows[0].task_counts == {"C": 2, "S": 2}
    assert rows[1].task_counts == {"F": 1, "S": 2}


def test_cli_plan_history_reset_recover(sqlite_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    store, _, cust, _ = _failed_run_with_landed_copy(sqlite_url, clock)
    assert main(["plan", "wh", "--url", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "resumes lineage" in out
    assert (
        "compute-only restart  copy step already landed; compute only; decided by execution"
        f" {cust.execution_id}; reuses audit_id {cust.audit_id}"
    ) in out
    assert "totals: 1 compute-only restart, 1 retry, 1 skip" in out
    assert main(["history", "wh", "--url", sqlite_url]) == 0
    assert "attempt 1  F/R  run run_1" in capsys.readouterr().out
    assert main(["reset", "wh", "--task", "nope", "--url", sqlite_url]) == 1
    assert "task 'nope' of DAG 'wh' is not in the catalog" in capsys.readouterr().err

    # recover: a task that crashed (never ended) and whose lease lapsed is closed as A/R.
    crashed = store.start_task(TaskSpec(BatchSpec("other", "r1"), "t", lease_seconds=1))
    clock.advance(5)
    del crashed
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_provider_bfx.cli.main", "recover", "--url", sqlite_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The subprocess uses the real clock, far past the fake one: the lease has expired there.
    assert proc.returncode == 0, proc.stderr
    assert "[BFX_LEASE_EXPIRED]" in proc.stdout and "task=t" in proc.stdout
    assert "1 execution(s) with an expired lease closed" in proc.stdout
    (row,) = [r for r in store.executions("other") if r.TaskId == "t"]
    assert (row.ExecutionStatus, row.NextLoadStatus) == ("A", "R")


def test_plan_names_the_landed_copys_audit_id_not_the_last_failures(sqlite_url: str) -> None:
    """A cleared successful run whose new try fails before copying: the data on disk is the
    first try's, so the compute-only restart (and the plan) reuse the first try's audit ID."""
    store = deployed_store(sqlite_url)
    batch = BatchSpec("wh", "run_1")
    first = store.start_task(TaskSpec(batch, "load"))
    store.write_checkpoint(
        execution_id=first.execution_id, scope_key=first.scope_key, node=keys.COPY_NODE, payload={}
    )
    store.end_task(first.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("wh", "run_1", succeeded=True)
    cleared = store.start_task(TaskSpec(batch, "load", try_number=2))  # the user clears it
    assert cleared.audit_id == cleared.execution_id != first.audit_id
    store.end_task(cleared.execution_id, TaskOutcome.FINAL_FAILURE, error_message="no copy")
    store.end_batch("wh", "run_1", succeeded=False)

    (planned,) = operations.plan(store, "wh").tasks
    assert planned.action == "compute-only restart"
    assert planned.prior_execution_id == cleared.execution_id
    assert planned.audit_id == first.audit_id
    restart = store.start_task(TaskSpec(BatchSpec("wh", "run_2"), "load"))
    assert (restart.status, restart.audit_id) == (ExecutionStatus.COMPUTE_ONLY, first.audit_id)
