"""Branches, Airflow retries, a task that skips itself, and what runs downstream of each.

``dag_run.conf``: ``{"path": "left"|"right"}`` is what ``choose`` returns (default left);
``{"fail_tasks": [task_id, ...]}`` fails those tasks. ``flaky`` fails its first try and succeeds
on its second (``retries=1``). Every real execution appends its task id to
``$BFX_EXAMPLE_COPY_DIR/executions``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowSkipException


def _note(context: dict[str, Any]) -> None:
    task_id = context["ti"].task_id
    conf = context["dag_run"].conf or {}
    if task_id in (conf.get("fail_tasks") or []):
        raise RuntimeError(f"{task_id}: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(task_id + "\n")


@task.branch
def choose(**context: Any) -> str:
    _note(context)
    return str((context["dag_run"].conf or {}).get("path") or "left")


@task
def left(**context: Any) -> str:
    _note(context)
    return "left"


@task
def left_after(value: str, **context: Any) -> str:
    _note(context)
    return value + "+after"


@task
def right(**context: Any) -> str:
    _note(context)
    return "right"


@task
def right_after(**context: Any) -> None:
    _note(context)


@task(retries=1, retry_delay=timedelta(0))
def flaky(**context: Any) -> int:
    _note(context)
    if context["ti"].try_number == 1:
        raise RuntimeError("flaky: first try fails")
    return context["ti"].try_number


@task
def nothing_to_do(**context: Any) -> None:
    _note(context)
    raise AirflowSkipException("no new files")


@task
def after_nothing(**context: Any) -> None:
    _note(context)


with DAG(
    dag_id="bfx_e2e_flow",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    chosen = choose()
    went_left = left()
    went_right = right()
    chosen >> [went_left, went_right]
    went_right >> right_after()
    left_after(went_left)
    flaky()
    nothing_to_do() >> after_nothing()
