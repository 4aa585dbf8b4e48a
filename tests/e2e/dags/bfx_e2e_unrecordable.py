"""Return values the catalog cannot hold (not standard JSON), and what downstream receives.

``stamp`` returns a timezone-aware ``datetime``, ``nothing`` returns ``None``; each has a
consumer that writes what it received (``type:value``). (A ``NaN`` return value needs no DAG here:
Airflow's own XCom refuses it, so that task fails in its first run whether routed or not.)
``dag_run.conf`` ``{"fail_tasks": [task_id, ...]}`` fails those tasks. Every real execution
appends a line to ``$BFX_EXAMPLE_COPY_DIR/executions`` so a test can tell what ran and what each
consumer was given.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

STAMP = datetime(2024, 5, 17, 6, 30, tzinfo=timezone.utc)


def _note(context: dict[str, Any], line: str) -> None:
    conf = context["dag_run"].conf or {}
    if context["ti"].task_id in (conf.get("fail_tasks") or []):
        raise RuntimeError(f"{context['ti'].task_id}: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(line + "\n")


@task
def stamp(**context: Any) -> datetime:
    _note(context, "stamp")
    return STAMP


@task
def use_stamp(value: Any, **context: Any) -> str:
    shown = value.isoformat() if isinstance(value, datetime) else repr(value)
    _note(context, f"use_stamp:{type(value).__name__}:{shown}")
    return value.isoformat()


@task
def nothing(**context: Any) -> None:
    _note(context, "nothing")


@task
def use_nothing(value: Any, **context: Any) -> None:
    _note(context, f"use_nothing:{type(value).__name__}:{value!r}")


with DAG(
    dag_id="bfx_e2e_unrecordable",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    use_stamp(stamp())
    use_nothing(nothing())
