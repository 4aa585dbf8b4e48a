"""Two DAGs whose ids 0.1.0 confused (issue 9, item 1), routed by the ``bfx`` tag.

``bfx_dot`` has the task ``b`` and, in the task group ``g``, the task ``g.c``; ``bfx_dot.g``
(a dotted DAG id) has the task ``c``. Under 0.1.0's ``dag_id.task_id`` names the DAG ``bfx_dot.b``
would have been ``bfx_dot``'s task ``b``, and ``bfx_dot.g.c`` one package for two tasks.
Every task appends its DAG and task id to ``$BFX_EXAMPLE_COPY_DIR/executions``;
``dag_run.conf`` ``{"fail_tasks": [...]}`` fails the tasks named.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, TaskGroup, task


@task
def step(**context: Any) -> str:
    ti = context["ti"]
    conf = context["dag_run"].conf or {}
    if ti.task_id in (conf.get("fail_tasks") or []):
        raise RuntimeError(f"{ti.task_id}: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(f"{ti.dag_id}:{ti.task_id}\n")
    return ti.task_id


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        tags=["bfx"],
        default_args={"retries": 0},
    )


with _dag("bfx_dot") as bfx_dot:
    with TaskGroup("g"):
        grouped = step.override(task_id="c")()
    grouped >> step.override(task_id="b")()

with _dag("bfx_dot.b") as bfx_dot_b:
    step.override(task_id="c")() >> step.override(task_id="d")()

with _dag("bfx_dot.g") as bfx_dot_g:
    step.override(task_id="c")()
