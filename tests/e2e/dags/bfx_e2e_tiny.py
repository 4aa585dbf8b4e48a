"""Two tasks and a marker file: did the work run? Routed by ``route_dag`` (no tag).

``work`` appends to ``$BFX_EXAMPLE_COPY_DIR/executions``; ``{"fail_tasks": ["work"]}`` fails it.
``after`` fails the same way, and also while ``$BFX_E2E_BROKEN`` is ``after`` (an outside cause
that a test can fix between two passes of the same DAG run).
Its ``bash``-like ``command`` argument is ``$BFX_E2E_COMMAND`` (read at parse time), so a test
can change the task's definition between runs.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_bfx.routing import route_dag

COMMAND = os.environ.get("BFX_E2E_COMMAND") or "copy {{ ds }}"
RETRY_LIMIT = int(os.environ.get("BFX_E2E_RETRY_LIMIT") or "3")


@task
def work(command: str, **context: Any) -> str:
    conf = context["dag_run"].conf or {}
    if "work" in (conf.get("fail_tasks") or []):
        raise RuntimeError("work: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(f"work:{command}\n")
    return command


@task
def after(value: str, **context: Any) -> None:
    conf = context["dag_run"].conf or {}
    if "after" in (conf.get("fail_tasks") or []) or os.environ.get("BFX_E2E_BROKEN") == "after":
        raise RuntimeError("after: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write("after\n")


with DAG(
    dag_id="bfx_e2e_tiny",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
) as dag:
    after(work(COMMAND))

route_dag(dag, retry_limit=RETRY_LIMIT)
