"""A nested batch through a DEFERRABLE ``TriggerDagRunOperator``, for the deployment tests.

``bfx_deploy_nested_parent``: ``trigger_child`` triggers ``bfx_deploy_nested_child`` and waits
for it in the triggerer (``deferrable=True``, ``wait_for_completion=True``), then ``report``.
``bfx_deploy_nested_child``: ``first >> second >> third``; ``second`` fails while
``$BFX_DEPLOY_LEDGER_DIR/child_broken`` exists (an outside cause a test fixes between runs).
Both are routed (tag ``bfx``); every real execution appends ``<run_id> <task>`` to
``$BFX_DEPLOY_LEDGER_DIR/<dag_id>.ledger``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task

_FOLDER = Path(os.environ.get("BFX_DEPLOY_LEDGER_DIR", "."))


def _record(context: Any) -> None:
    ti = context["ti"]
    with open(_FOLDER / f"{ti.dag_id}.ledger", "a", encoding="utf-8") as out:
        out.write(f"{ti.run_id} {ti.task_id}\n")


@task
def first(**context: Any) -> None:
    _record(context)


@task
def second(**context: Any) -> None:
    if (_FOLDER / "child_broken").exists():
        raise RuntimeError("second: injected failure (child_broken exists)")
    _record(context)


@task
def third(**context: Any) -> None:
    _record(context)


@task
def report(**context: Any) -> None:
    _record(context)


with DAG(
    dag_id="bfx_deploy_nested_child",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    first() >> second() >> third()

with DAG(
    dag_id="bfx_deploy_nested_parent",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    (
        TriggerDagRunOperator(
            task_id="trigger_child",
            trigger_dag_id="bfx_deploy_nested_child",
            conf={"source": "{{ dag_run.dag_id }}"},
            wait_for_completion=True,
            deferrable=True,
            poke_interval=1,
        )
        >> report()
    )
