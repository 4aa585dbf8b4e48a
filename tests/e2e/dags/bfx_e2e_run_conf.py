"""Two tasks with Airflow retries, for what a run's ``{"bfx": ...}`` conf asks of the routing.

``first >> second``, each with ``retries=2`` (no delay), so a test can tell whether a failure
was retried. Every real execution appends ``task_id`` to ``$BFX_EXAMPLE_COPY_DIR/executions``;
``{"fail_tasks": [task_id, ...]}`` fails those tasks after recording them.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task


def _note(context: dict[str, Any]) -> None:
    task_id = context["ti"].task_id
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(task_id + "\n")
    conf = context["dag_run"].conf or {}
    if task_id in (conf.get("fail_tasks") or []):
        raise RuntimeError(f"{task_id}: injected failure")


@task
def first(**context: Any) -> None:
    _note(context)


@task
def second(**context: Any) -> None:
    _note(context)


with DAG(
    dag_id="bfx_e2e_run_conf",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 2, "retry_delay": timedelta(0)},
):
    first() >> second()
