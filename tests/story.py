"""Shared helpers for store-level tests: deploy a catalog, drive batches, read rows back."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec, TaskStarted


@dataclass
class FakeClock:
    """A clock the test moves by hand (naive UTC, like the catalog)."""

    now: datetime = field(default_factory=lambda: datetime(2026, 11, 22, 2, 0, 0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def deployed_store(url: str, clock: FakeClock | None = None) -> CatalogStore:
    """A store on a catalog deployed the way users deploy it (``bfx catalog init``)."""
    engine = create_catalog_engine(url)
    upgrade(engine)
    return CatalogStore(engine, clock=clock or FakeClock())


def run_batch(
    store: CatalogStore,
    dag_id: str,
    run_id: str,
    tasks: list[str],
    *,
    fail: set[str] = frozenset(),  # type: ignore[assignment]
    stop_after_failure: bool = True,
    close: bool = True,
) -> dict[str, TaskStarted]:
    """Run ``tasks`` in order the way Airflow would: start each, then end it.

    A task in ``fail`` fails finally; with ``stop_after_failure`` the tasks after it never
    start (the DAG run fails there), as in the 50-table story.
    """
    batch = BatchSpec(dag_id, run_id)
    started: dict[str, TaskStarted] = {}
    failed = False
    for task_id in tasks:
        if failed and stop_after_failure:
            break
        result = store.start_task(TaskSpec(batch, task_id))
        started[task_id] = result
        if result.run is not Run.RUN:
            continue
        if task_id in fail:
            store.end_task(
                result.execution_id,
                TaskOutcome.FINAL_FAILURE,
                error_type="RuntimeError",
                error_message=f"{task_id} failed",
            )
            failed = True
        else:
            store.end_task(result.execution_id, TaskOutcome.SUCCESS)
    if close:
        store.end_batch(dag_id, run_id, succeeded=not failed)
    return started


def task_rows(store: CatalogStore, dag_id: str, run_id: str) -> dict[str, Any]:
    return {r.TaskId: r for r in store.executions(dag_id, run_id) if r.TaskId is not None}


def batch_row(store: CatalogStore, dag_id: str, run_id: str) -> Any:
    (row,) = [r for r in store.executions(dag_id, run_id) if r.TaskId is None]
    return row


def codes(rows: Any) -> Counter[tuple[str, str]]:
    return Counter((r.ExecutionStatus, r.NextLoadStatus) for r in rows)
