"""Airflow's outcome is evidence (DESIGN.md §4): the pure rules, and the store adopting them on
real catalogs (SQLite and PostgreSQL). The deployment tests prove the paths that feed them."""

from __future__ import annotations

import pytest

from airflow_provider_bfx.catalog import evidence
from airflow_provider_bfx.catalog.codes import ExecutionStatus as St
from airflow_provider_bfx.catalog.codes import NextLoadStatus as Nls
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, RunEvidence, TaskSpec
from tests.story import batch_row, deployed_store


@pytest.mark.parametrize(
    ("current", "state", "batch_failed", "expected"),
    [
        (St.FAILED, "success", True, (St.SUCCEEDED, Nls.SKIP)),
        (St.EXECUTING, "success", False, (St.SUCCEEDED, Nls.PENDING)),
        (St.ABORTED, "success", True, (St.SUCCEEDED, Nls.SKIP)),
        (St.SKIPPED, "success", True, None),  # skipped as completed / replayed: agrees
        (St.SUCCEEDED, "success", True, None),
        (St.SUCCEEDED, "failed", True, (St.FAILED, Nls.RETRY)),
        (St.RETRYING, "up_for_retry", False, (St.FAILED, Nls.RETRY)),
        (St.FAILED, "failed", True, None),
        (St.ABORTED, "failed", True, None),
        (St.EXECUTING, "skipped", False, (St.SKIPPED, Nls.PENDING)),
        (St.EXECUTING, "upstream_failed", True, (St.ABORTED, Nls.RETRY)),
        (St.EXECUTING, "running", False, None),
        (St.EXECUTING, "deferred", False, None),
        (St.EXECUTING, None, False, None),
    ],
)
def test_task_rules(current: St, state: str | None, batch_failed: bool, expected: object) -> None:
    got = evidence.adopt_task(current, state, batch_failed=batch_failed, copy_landed=False)
    assert (None if got is None else (got.status, got.next_load_status)) == expected


def test_a_failure_after_a_landed_copy_restarts_compute_only() -> None:
    got = evidence.adopt_task(St.EXECUTING, "failed", batch_failed=True, copy_landed=True)
    assert got is not None and got.next_load_status is Nls.COMPUTE_ONLY


@pytest.mark.parametrize(
    ("current", "closed", "state", "expected"),
    [
        (St.FAILED, True, "success", True),
        (St.SUCCEEDED, True, "failed", False),
        (St.FAILED, False, "failed", False),  # failed by a task, closed by the run's end
        (St.FAILED, True, "failed", None),
        (St.SUCCEEDED, True, "success", None),
        (St.EXECUTING, False, "running", None),
        (St.SKIPPED, True, "failed", None),
    ],
)
def test_batch_rules(current: St, closed: bool, state: str, expected: bool | None) -> None:
    assert evidence.adopt_batch(current, state, closed=closed) is expected


def test_marked_success_by_hand_is_skipped_next_run(catalog_url: str) -> None:
    store = deployed_store(catalog_url)
    b1 = BatchSpec("wh", "run_1")
    a = store.start_task(TaskSpec(b1, "a"))
    store.end_task(a.execution_id, TaskOutcome.SUCCESS)
    b = store.start_task(TaskSpec(b1, "b"))
    store.end_task(b.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch("wh", "run_1", succeeded=False)

    (waiting,) = store.runs_awaiting_evidence("wh", "run_2")
    assert (waiting.run_id, waiting.settled, waiting.task_ids) == ("run_1", False, ("a", "b"))
    lines = store.adopt_airflow_states(
        "wh", [RunEvidence("run_1", "failed", {("a", -1): "success", ("b", -1): "success"})]
    )
    assert len(lines) == 1 and lines[0].startswith("[BFX_ADOPTED_AIRFLOW_STATE] dag=wh")
    assert "task=b" in lines[0] and "airflow_state=success was=F status=S" in lines[0]
    # Idempotent: the same evidence again changes nothing.
    assert (
        store.adopt_airflow_states("wh", [RunEvidence("run_1", "failed", {("b", -1): "success"})])
        == []
    )
    b2 = BatchSpec("wh", "run_2")
    assert store.start_task(TaskSpec(b2, "a")).run is Run.SKIP
    assert store.start_task(TaskSpec(b2, "b")).run is Run.SKIP


def test_a_clean_batch_marked_failed_afterwards_resumes(catalog_url: str) -> None:
    store = deployed_store(catalog_url)
    b1 = BatchSpec("wh", "run_1")
    for task in ("a", "b"):
        started = store.start_task(TaskSpec(b1, task))
        store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("wh", "run_1", succeeded=True)
    (waiting,) = store.runs_awaiting_evidence("wh", "run_2")
    assert waiting.settled and waiting.task_ids == ()
    assert store.task_ids_of_batch(waiting.batch_execution_id) == ("a", "b")
    lines = store.adopt_airflow_states(
        "wh", [RunEvidence("run_1", "failed", {("a", -1): "failed", ("b", -1): "success"})]
    )
    assert [("task=a" in x, "batch_execution_id=" in x) for x in lines] == [
        (True, False),
        (False, True),
    ]
    batch1 = batch_row(store, "wh", "run_1")
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")
    b2 = BatchSpec("wh", "run_2")
    a2 = store.start_task(TaskSpec(b2, "a"))
    assert a2.run is Run.RUN and a2.status is St.RETRYING
    assert store.start_task(TaskSpec(b2, "b")).run is Run.SKIP


def test_a_run_whose_batch_started_a_new_lineage_awaits_no_evidence(catalog_url: str) -> None:
    """Once this run's batch exists in a newer lineage, the previous lineage's runs decide
    nothing here: its later task starts do not ask Airflow about them again (issue 12)."""
    store = deployed_store(catalog_url)
    b1 = BatchSpec("wh", "run_1")
    store.end_task(store.start_task(TaskSpec(b1, "a")).execution_id, TaskOutcome.SUCCESS)
    store.end_batch("wh", "run_1", succeeded=True)
    # Before run_2 has a batch, its first task start reads the evidence (and may resume).
    assert [w.run_id for w in store.runs_awaiting_evidence("wh", "run_2")] == ["run_1"]
    store.start_task(TaskSpec(BatchSpec("wh", "run_2"), "a"))
    assert batch_row(store, "wh", "run_2").LineageID != batch_row(store, "wh", "run_1").LineageID
    assert store.runs_awaiting_evidence("wh", "run_2") == []
    # A batch that resumes the lineage keeps reading it: Airflow may still contradict it.
    b3 = BatchSpec("wh", "run_3")
    failed = store.start_task(TaskSpec(b3, "a"))
    store.end_task(failed.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch("wh", "run_3", succeeded=False)
    (before,) = store.runs_awaiting_evidence("wh", "run_4")
    assert (before.run_id, before.batch_started, before.task_ids) == ("run_3", False, ("a",))
    store.start_task(TaskSpec(BatchSpec("wh", "run_4"), "a"))
    assert batch_row(store, "wh", "run_4").LineageID == batch_row(store, "wh", "run_3").LineageID
    # Its later starts: only their own task's rows of run_3 (the lineage is chosen).
    (after,) = store.runs_awaiting_evidence("wh", "run_4")
    assert (after.run_id, after.batch_started, after.task_ids) == ("run_3", True, ())


def test_an_active_row_lost_to_an_outage_is_closed_with_airflows_success(catalog_url: str) -> None:
    store = deployed_store(catalog_url)
    b1 = BatchSpec("wh", "run_1")
    lost = store.start_task(TaskSpec(b1, "a"))  # its end never reached the catalog
    store.end_batch("wh", "run_1", succeeded=True)
    (waiting,) = store.runs_awaiting_evidence("wh", "run_2")
    assert not waiting.settled  # an active row keeps the batch unsettled
    store.adopt_airflow_states("wh", [RunEvidence("run_1", "success", {("a", -1): "success"})])
    row = [r for r in store.executions("wh", "run_1") if r.ExecutionID == lost.execution_id][0]
    assert (row.ExecutionStatus, row.NextLoadStatus, row.LeaseExpiresAt) == ("S", "P", None)
    assert store.runs_awaiting_evidence("wh", "run_2")[0].settled


def test_sdk_enum_states_are_read_as_their_values() -> None:
    from airflow.sdk.api.datamodels._generated import DagRunState

    from airflow_provider_bfx.routing.evidence import state_key, state_text

    assert state_text(DagRunState.FAILED) == "failed"
    assert state_text(None) is None
    assert state_key("load_3", {"load"}) == ("load", 3)
    assert state_key("load_3", {"load_3"}) == ("load_3", -1)


def test_plan_names_the_adoption_behind_a_decision(catalog_url: str) -> None:
    from airflow_provider_bfx.catalog import operations

    store = deployed_store(catalog_url)
    b1 = BatchSpec("wh", "run_1")
    a = store.start_task(TaskSpec(b1, "a"))
    store.end_task(a.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch("wh", "run_1", succeeded=False)
    store.adopt_airflow_states("wh", [RunEvidence("run_1", "failed", {("a", -1): "success"})])
    (planned,) = operations.plan(store, "wh").tasks
    assert planned.action == "skip" and planned.prior_execution_id == a.execution_id
    assert planned.adopted == "Airflow recorded success; the catalog had F"


def test_whether_a_row_changes_does_not_depend_on_the_flags() -> None:
    """``evidence.disagrees`` (a later start skips the adoption transaction when Airflow
    agrees) relies on it: ``batch_failed`` and ``copy_landed`` choose only the
    NextLoadStatus of a change."""
    states = [
        None,
        "success",
        "failed",
        "up_for_retry",
        "skipped",
        "upstream_failed",
        "removed",
        "running",
        "queued",
    ]
    for current in St:
        for state in states:
            outcomes = {
                evidence.adopt_task(current, state, batch_failed=bf, copy_landed=cl) is None
                for bf in (False, True)
                for cl in (False, True)
            }
            assert len(outcomes) == 1, (current, state)
