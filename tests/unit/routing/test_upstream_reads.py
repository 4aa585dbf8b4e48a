"""The gate's upstream check reads only the upstreams' rows (issue 12, decision 0100).

The check runs on a real SQLite catalog with real rows and a real Airflow task (its
``upstream_task_ids`` come from a real DAG). The task instance around it is a stand-in holding
that task and Airflow's ``get_task_states``, which answers from a dict and records being asked:
the fast path (every upstream succeeded in the catalog) must not ask Airflow at all. The work
the catalog does is counted in SQLite virtual-machine instructions, so a check that reads the
whole run (what the gate did before) fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.catalog.txn import utcnow
from airflow_provider_bfx.routing.records import TryKey
from airflow_provider_bfx.routing.upstream import require_upstreams
from tests.story import deployed_store
from tests.unit.catalog.test_upstream_rows import vm_steps

DAG_ID = "upstream_reads"


class TaskInstanceStandIn:
    """What ``require_upstreams`` reads of a task instance: its task, and Airflow's states."""

    def __init__(self, task: Any, states: dict[str, str]) -> None:
        self.task = task
        self.states = states
        self.asked: list[list[str]] = []

    def get_task_states(
        self, *, dag_id: str, run_ids: list[str], task_ids: list[str]
    ) -> dict[str, dict[str, str]]:
        self.asked.append(task_ids)
        return {run_ids[0]: {t: self.states[t] for t in task_ids if t in self.states}}


@pytest.fixture
def store(sqlite_url: str) -> Iterator[CatalogStore]:
    deployed = deployed_store(sqlite_url, clock=utcnow)
    try:
        yield deployed
    finally:
        deployed.engine.dispose()


def downstream_task() -> Any:
    """A real DAG: ``a`` and ``b`` feed ``join``."""
    with DAG(DAG_ID, schedule=None, start_date=datetime(2026, 1, 1)):
        a, b, join = (
            EmptyOperator(task_id="a"),
            EmptyOperator(task_id="b"),
            EmptyOperator(task_id="join"),
        )
        [a, b] >> join
    return join


def run_with(store: CatalogStore, run_id: str, others: int, *, skip_b: bool = False) -> None:
    """``a`` and ``b`` succeeded (or ``b`` was skipped by its own logic), plus ``others`` tasks."""
    batch = BatchSpec(DAG_ID, run_id)
    for i, task_id in enumerate(["a", "b", *(f"other_{i:04d}" for i in range(others))]):
        started = store.start_task(TaskSpec(batch, task_id))
        outcome = TaskOutcome.SKIPPED_BY_LOGIC if skip_b and i == 1 else TaskOutcome.SUCCESS
        store.end_task(started.execution_id, outcome)


def key(run_id: str) -> TryKey:
    return TryKey(DAG_ID, run_id, "join", -1, 1)


def test_upstream_check_work_does_not_grow_with_the_run(store: CatalogStore) -> None:
    run_with(store, "small", 10)
    run_with(store, "large", 800)
    ti = TaskInstanceStandIn(downstream_task(), {})

    small = vm_steps(store, lambda: require_upstreams(ti, store, key("small")))
    large = vm_steps(store, lambda: require_upstreams(ti, store, key("large")))

    assert ti.asked == []  # both upstreams S in the catalog: Airflow is not asked
    assert large <= 1.2 * small, (small, large)


def test_an_upstream_skipped_by_its_own_logic_still_skips_the_task(store: CatalogStore) -> None:
    """The semantics kept (decision 0045): ``b``'s C row ran under a lease, so Airflow's
    ``skipped`` for it is not a skip as completed, and ``join`` is skipped."""
    run_with(store, "r", 50, skip_b=True)
    ti = TaskInstanceStandIn(downstream_task(), {"a": "success", "b": "skipped"})
    with pytest.raises(AirflowSkipException, match=r"BFX_UPSTREAM_SKIPPED.*upstream=b"):
        require_upstreams(ti, store, key("r"))
    assert ti.asked == [["a", "b"]]
