"""A DAG and a task seen for the first time (decision 0108): their packages are registered by
writes whose result is not read, with ids the facts queries took, instead of a read, a check,
an INSERT and a read back each. On both engines: the rows they write; a deleted package row is
still named; a start that registers nothing takes no package id."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text

from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.exceptions import CatalogStateError
from tests.unit.catalog.test_identity import _without_constraints


def _packages(store: CatalogStore) -> dict[tuple[str, str | None], Any]:
    P = store.s.Package
    with store.engine.begin() as conn:
        return {(r.DagId, r.TaskId): r for r in conn.execute(select(P))}


def test_a_new_dags_packages_are_the_rows_registration_always_wrote(store: CatalogStore) -> None:
    batch = BatchSpec("fresh_dag", "run-0", default_retry_limit=5, default_max_resume_age=3600)
    started = store.start_task(TaskSpec(batch, "load"))
    store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    plain = store.start_task(TaskSpec(BatchSpec("plain_dag", "run-0"), "load"))

    found = _packages(store)
    dag, task = found[("fresh_dag", None)], found[("fresh_dag", "load")]
    assert (dag.PackageName, dag.IsBatch, dag.IsEnabled, dag.ParentPackageID) == (
        "fresh_dag",
        1,
        1,
        None,
    )
    assert (dag.RetryLimit, dag.MaxResumeAge) == (5, 3600)
    assert (task.PackageName, task.IsBatch, task.IsEnabled) == ("fresh_dag/load", 0, 1)
    assert (task.ParentPackageID, task.RetryLimit, task.MaxResumeAge) == (dag.PackageID, 3, None)
    assert started.package_id == task.PackageID
    assert found[("plain_dag", None)].RetryLimit == 3  # the column's default, written
    assert plain.package_id == found[("plain_dag", "load")].PackageID
    rows = {r.ExecutionID: r for r in store.executions("fresh_dag", "run-0")}
    assert rows[started.batch_execution_id].PackageID == dag.PackageID
    assert rows[started.execution_id].PackageID == task.PackageID


def test_a_start_that_registers_nothing_takes_no_package_id(store: CatalogStore) -> None:
    store.start_task(TaskSpec(BatchSpec("fresh_dag", "run-0"), "load"))
    highest = max(p.PackageID for p in _packages(store).values())
    store.start_task(TaskSpec(BatchSpec("fresh_dag", "run-1"), "load"))
    store.start_task(TaskSpec(BatchSpec("fresh_dag", "run-1"), "load", try_number=2))
    store.start_task(TaskSpec(BatchSpec("fresh_dag", "run-1"), "other"))
    assert max(p.PackageID for p in _packages(store).values()) == highest + 1
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            last = conn.execute(
                text(
                    "SELECT pg_sequence_last_value("
                    "pg_get_serial_sequence('bfx.package', 'packageid')::regclass)"
                )
            ).scalar_one()
        assert last == highest + 1  # no id burnt by the starts that found their packages


@pytest.mark.parametrize("task_id", [None, "load"])
def test_a_deleted_package_row_is_still_named(store: CatalogStore, task_id: str | None) -> None:
    """Executions under an identity with no package row: the registration falls back to the
    reads that name the deleted row, for a DAG package as for a task package."""
    first = store.start_task(TaskSpec(BatchSpec("gone_dag", "run-0"), "load"))
    store.end_task(first.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("gone_dag", "run-0", succeeded=True)
    pid = _packages(store)[("gone_dag", task_id)].PackageID
    _without_constraints(store, f"DELETE FROM {{p}}Package WHERE PackageID = {pid}")
    with pytest.raises(CatalogStateError, match="deleted by hand") as caught:
        store.start_task(TaskSpec(BatchSpec("gone_dag", "run-1"), "load"))
    assert f"PackageID={pid}" in str(caught.value)
