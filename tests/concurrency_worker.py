"""Worker processes for ``tests/unit/catalog/test_concurrency.py``.

Each worker is a real OS process (``multiprocessing`` with the "spawn" start method) with its own
engine and :class:`CatalogStore`, so that every interaction between workers goes through the
catalog database and nothing is shared in memory. The pool is started once per test module (a
spawn costs an interpreter start and the imports); each test sends every worker one job. The
workers warm their connection, meet at a shared :class:`multiprocessing.Barrier` and then hit the
catalog at the same moment.

A job's outcome is sent back as plain data; an exception is sent back as its traceback (the test
fails with it) and breaks the barrier, so that the other workers do not wait for the timeout.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import (
    BatchSpec,
    CatalogStore,
    TaskEnded,
    TaskSpec,
    TaskStarted,
)

BARRIER_TIMEOUT = 30.0


def started_record(spec: TaskSpec, started: TaskStarted) -> dict[str, Any]:
    return {
        "task_id": spec.task_id,
        "try_number": spec.try_number,
        "execution_id": started.execution_id,
        "batch_execution_id": started.batch_execution_id,
        "status": started.status.value,
        "next_load_status": started.next_load_status.value,
        "run": started.run.value,
        "repeated": started.repeated,
    }


def ended_record(task_id: str, outcome: TaskOutcome, ended: TaskEnded) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "outcome": outcome.value,
        "execution_id": ended.execution_id,
        "status": ended.status.value,
        "next_load_status": ended.next_load_status.value,
        "changed": ended.changed,
        "batch_failed": ended.batch_failed,
    }


def _store(url: str) -> CatalogStore:
    store = CatalogStore(create_catalog_engine(url))
    # Warm up before the barrier: schema check, first connection, imports of the driver. The race
    # then starts with every worker one round trip away from the catalog.
    store.executions("warm-up")
    return store


def run_tasks(
    *,
    barrier: Barrier,
    index: int,
    url: str,
    dag_id: str,
    run_id: str,
    tasks: list[tuple[str, str]],
) -> dict[str, Any]:
    """Start every task of ``tasks`` (all workers at once), wait until every worker has started
    its tasks, then end them in order with the given outcomes (all workers at once)."""
    store = _store(url)
    try:
        batch = BatchSpec(dag_id, run_id)
        specs = [TaskSpec(batch, task_id, lease_owner=f"worker-{index}") for task_id, _ in tasks]
        barrier.wait(BARRIER_TIMEOUT)
        started = [store.start_task(spec) for spec in specs]
        barrier.wait(BARRIER_TIMEOUT)
        ended = []
        for (task_id, outcome_value), start in zip(tasks, started, strict=True):
            outcome = TaskOutcome(outcome_value)
            result = store.end_task(
                start.execution_id,
                outcome,
                error_type="RuntimeError" if outcome is not TaskOutcome.SUCCESS else None,
                error_message=f"{task_id} failed in worker {index}"
                if outcome is not TaskOutcome.SUCCESS
                else None,
            )
            ended.append(ended_record(task_id, outcome, result))
        return {
            "started": [started_record(s, r) for s, r in zip(specs, started, strict=True)],
            "ended": ended,
        }
    finally:
        store.engine.dispose()


def start_one(
    *,
    barrier: Barrier,
    index: int,
    url: str,
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    lease_seconds: float,
) -> dict[str, Any]:
    """Start one try of one task, at the same moment as every other worker."""
    store = _store(url)
    try:
        spec = TaskSpec(
            BatchSpec(dag_id, run_id),
            task_id,
            try_number=try_number,
            lease_owner=f"worker-{index}",
            lease_seconds=lease_seconds,
        )
        barrier.wait(BARRIER_TIMEOUT)
        return started_record(spec, store.start_task(spec))
    finally:
        store.engine.dispose()


JOBS: dict[str, Callable[..., dict[str, Any]]] = {"run_tasks": run_tasks, "start_one": start_one}


def serve(index: int, jobs: Queue[Any], results: Queue[Any], barrier: Barrier) -> None:
    """A worker's main loop: run jobs until it receives ``None``."""
    while True:
        job = jobs.get()
        if job is None:
            return
        name, kwargs = job
        try:
            payload = JOBS[name](barrier=barrier, index=index, **kwargs)
        except Exception:
            barrier.abort()  # the others stop waiting for this worker at once
            results.put((index, "error", traceback.format_exc()))
        else:
            results.put((index, "ok", payload))
