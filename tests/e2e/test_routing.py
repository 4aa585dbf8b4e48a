"""Who is routed, what routing changes on a task, and what it must leave alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Catalog, bfx_log, load_dag, run_dag

from airflow_provider_bfx.callbacks import (
    bfx_on_failure,
    bfx_on_retry,
    bfx_on_skipped,
    bfx_on_success,
    bfx_post_execute,
    bfx_pre_execute,
)
from airflow_provider_bfx.routing.install import route_tasks

pytestmark = pytest.mark.slow

CALLBACKS = {
    "on_success_callback": bfx_on_success,
    "on_failure_callback": bfx_on_failure,
    "on_retry_callback": bfx_on_retry,
    "on_skipped_callback": bfx_on_skipped,
}


def callbacks_of(task: Any, attr: str) -> list[Any]:
    value = getattr(task, attr)
    if value is None:
        return []
    return [value] if callable(value) else list(value)


def assert_routed(task: Any) -> None:
    if hasattr(task, "partial_kwargs"):  # mapped: the stable trampolines, in partial_kwargs
        assert task.partial_kwargs["pre_execute"] is bfx_pre_execute
        assert task.partial_kwargs["post_execute"] is bfx_post_execute
    else:
        assert task._pre_execute_hook is bfx_pre_execute
        assert task._post_execute_hook is bfx_post_execute
    for attr, callback in CALLBACKS.items():
        assert callbacks_of(task, attr).count(callback) == 1, (task.task_id, attr)


def serialized(dag: Any) -> str:
    from airflow.serialization.serialized_objects import DagSerialization

    return json.dumps(DagSerialization.to_dict(dag), sort_keys=True, default=str)


def test_dag_that_did_not_opt_in_is_left_untouched_and_writes_no_rows(
    catalog: Catalog, tmp_path: Path
) -> None:
    dag = load_dag("bfx_e2e_unrouted")
    for task in dag.tasks:
        assert task._pre_execute_hook is None
        assert task._post_execute_hook is None
        assert str(task.trigger_rule.value) == "all_success"
        for attr in CALLBACKS:
            assert callbacks_of(task, attr) == []
    run = run_dag("bfx_e2e_unrouted")
    assert run.state == "success"
    if catalog.kind == "sqlite":
        assert not (tmp_path / "bfx_catalog.db").exists()  # not even created
    else:
        assert catalog.rows("bfx_e2e_unrouted") == []


def test_tagged_dag_gets_the_gate_callbacks_and_none_failed_on_every_task(
    airflow_db: Path,
) -> None:
    dag = load_dag("warehouse_batch")
    assert len(dag.tasks) == 52
    for task in dag.tasks:
        assert_routed(task)
        assert str(task.trigger_rule.value) == "none_failed"


def test_mapped_task_is_routed_through_stable_trampolines_and_routing_is_idempotent(
    airflow_db: Path,
) -> None:
    dag = load_dag("bfx_e2e_items")
    (mapped,) = [t for t in dag.tasks if t.task_id == "process"]
    assert_routed(mapped)
    before = serialized(dag)
    route_tasks(dag)  # the policy runs many times per process: nothing changes
    route_tasks(dag)
    for task in dag.tasks:
        assert_routed(task)
    assert serialized(dag) == before
    # a second, independent parse serializes to the same DAG: no new DAG version per parse
    assert serialized(load_dag("bfx_e2e_items")) == before
    assert "def bfx_pre_execute(context" in before  # Airflow keeps the trampoline's source


def test_route_all_dags_routes_a_dag_without_the_tag(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__ROUTE_ALL_DAGS", "True")
    dag = load_dag("bfx_e2e_unrouted")
    for task in dag.tasks:
        assert_routed(task)
    run = run_dag("bfx_e2e_unrouted")
    assert run.state == "success"
    rows = catalog.task_rows("bfx_e2e_unrouted", run.run_id)
    assert {(t, r.ExecutionStatus) for (t, _), r in rows.items()} == {
        ("first", "S"),
        ("second", "S"),
    }


def test_route_dag_routes_an_untagged_dag_with_its_own_retry_limit(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BFX_E2E_RETRY_LIMIT", "1")
    dag = load_dag("bfx_e2e_tiny")
    assert "bfx" in dag.tags  # route_dag says so where the scheduler can see it
    for task in dag.tasks:
        assert_routed(task)
    run1 = run_dag("bfx_e2e_tiny", {"fail_tasks": ["after"]})
    assert run1.state == "failed"
    batch1 = catalog.batch_row("bfx_e2e_tiny", run1.run_id)
    caplog.clear()

    run2 = run_dag("bfx_e2e_tiny")
    assert run2.state == "success"
    assert run2.state_of("work") == "success"  # one attempt allowed: the lineage starts over
    batch2 = catalog.batch_row("bfx_e2e_tiny", run2.run_id)
    assert batch2.OriginalExecutionID == batch2.ExecutionID
    assert (
        f"[BFX_RETRY_LIMIT_REACHED] dag=bfx_e2e_tiny batch_execution_id={batch2.ExecutionID}"
        f" original_execution_id={batch1.ExecutionID} attempts=1 retry_limit=1"
    ) in bfx_log(caplog)


def test_changed_definition_is_reused_with_a_warning_by_default(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BFX_E2E_COMMAND", "copy {{ ds }}")
    assert run_dag("bfx_e2e_tiny", {"fail_tasks": ["after"]}).state == "failed"
    caplog.clear()
    monkeypatch.setenv("BFX_E2E_COMMAND", "copy --full {{ ds }}")
    run2 = run_dag("bfx_e2e_tiny")
    assert run2.state == "success"
    assert run2.state_of("work") == "skipped"
    assert "[BFX_FINGERPRINT_MISMATCH]" in bfx_log(caplog)
    assert "policy=WARN" in bfx_log(caplog)


def test_same_definition_on_another_day_is_not_a_change(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__VERSION_MISMATCH_POLICY", "FAIL")
    monkeypatch.setenv("BFX_E2E_COMMAND", "copy {{ ds }}")  # renders differently every day
    assert run_dag("bfx_e2e_tiny", {"fail_tasks": ["after"]}).state == "failed"
    caplog.clear()
    run2 = run_dag("bfx_e2e_tiny")  # the next logical date
    assert run2.state == "success"
    assert run2.state_of("work") == "skipped"
    assert "[BFX_FINGERPRINT_MISMATCH]" not in bfx_log(caplog)


def test_changed_definition_fails_the_task_under_the_fail_policy(
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    copies_dir: Path,
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__VERSION_MISMATCH_POLICY", "FAIL")
    monkeypatch.setenv("BFX_E2E_COMMAND", "copy {{ ds }}")
    assert run_dag("bfx_e2e_tiny", {"fail_tasks": ["after"]}).state == "failed"
    monkeypatch.setenv("BFX_E2E_COMMAND", "copy --full {{ ds }}")
    run2 = run_dag("bfx_e2e_tiny")
    assert run2.state == "failed"
    assert run2.state_of("work") == "failed"
    assert run2.state_of("after") == "upstream_failed"
    row = catalog.task_rows("bfx_e2e_tiny", run2.run_id)[("work", -1)]
    assert row.ExecutionStatus == "A"
    assert "policy=FAIL" in bfx_log(caplog)
    # the work never ran again: one copy, from run 1
    lines = (copies_dir / "executions").read_text().splitlines()
    assert [line for line in lines if line.startswith("work:")] == [lines[0]]
