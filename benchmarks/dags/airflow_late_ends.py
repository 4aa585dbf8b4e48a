"""Three plain DAGs (not routed: no ``bfx`` tag) for ``benchmarks/bench_late_ends.py``: ten
tasks each that do nothing and end *success*, *skipped* (``AirflowSkipException``) or *failed*
(an exception, no retries). Nothing of the provider runs in their tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

TASKS = 10


@task
def succeed() -> None:
    return None


@task
def skip() -> None:
    raise AirflowSkipException("skipped by the benchmark")


@task(retries=0)
def fail() -> None:
    raise RuntimeError("failed by the benchmark")


def _build(dag_id: str, body: Any) -> None:
    @dag(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_tasks=5,
    )
    def _late_ends() -> None:
        for i in range(TASKS):
            body.override(task_id=f"t{i}")()

    _late_ends()


_build("late_ends_success", succeed)
_build("late_ends_skipped", skip)
_build("late_ends_failed", fail)
