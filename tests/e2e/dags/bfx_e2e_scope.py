"""Two independent tasks feeding a third: which of them ran again on resume?

Every task appends ``task:ds:status`` to ``$BFX_EXAMPLE_COPY_DIR/executions``;
``{"fail_tasks": ["last"]}`` fails ``last`` (after both succeeded). ``changing``'s ``command``
argument is ``$BFX_E2E_SCOPE_COMMAND`` (read at parse time), so a test can change that one task's
definition between runs. ``$BFX_E2E_SCOPE_RESUME_SCOPE`` and ``$BFX_E2E_SCOPE_POLICY``, when set,
are passed to ``route_dag`` (the per-DAG overrides of ``[bfx] resume_scope`` and
``version_mismatch_policy``).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_bfx.routing import route_dag

COMMAND = os.environ.get("BFX_E2E_SCOPE_COMMAND") or "load {{ ds }}"


def _ran(task_id: str, context: Any) -> None:
    """``task:ds:status``, status = what the gate started this execution as (E, R, D)."""
    handle = context.get("bfx")
    status = getattr(getattr(handle, "status", None), "value", "-")
    line = f"{task_id}:{context['ds']}:{status}"
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(f"{line}\n")


@task
def stable(**context: Any) -> str:
    _ran("stable", context)
    return "stable"


@task
def changing(command: str, **context: Any) -> str:
    _ran("changing", context)
    return command


@task
def last(a: str, b: str, **context: Any) -> None:
    conf = context["dag_run"].conf or {}
    if "last" in (conf.get("fail_tasks") or []):
        raise RuntimeError("last: injected failure")
    _ran("last", context)


with DAG(
    dag_id="bfx_e2e_scope",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
) as dag:
    last(stable(), changing(COMMAND))

route_dag(
    dag,
    resume_scope=os.environ.get("BFX_E2E_SCOPE_RESUME_SCOPE") or None,
    version_mismatch_policy=os.environ.get("BFX_E2E_SCOPE_POLICY") or None,
)
