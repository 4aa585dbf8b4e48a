"""A parent DAG that triggers two child DAGs and waits for them (nested batches, DESIGN §5).

``trigger_child_ok`` triggers ``bfx_nested_child_ok`` and ``trigger_child_bad`` triggers
``bfx_nested_child_bad``; both wait for the child run to end (``wait_for_completion``, polled
every second), so a failed child fails its trigger task and the parent run. Tagged ``bfx``:
the trigger tasks are routed, and the runs they trigger are child batches of their executions.
``report`` appends ``parent:report`` to ``$BFX_EXAMPLE_COPY_DIR/executions``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task


@task
def report() -> None:
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write("parent:report\n")


with DAG(
    dag_id="bfx_nested_parent",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
) as dag:
    triggers = [
        TriggerDagRunOperator(
            task_id=f"trigger_{child}",
            trigger_dag_id=f"bfx_nested_{child}",
            # The user's own conf: kept, the routing only adds {"bfx": {"parent_execution_id"}}.
            conf={"source": "{{ dag_run.dag_id }}", "child": child},
            wait_for_completion=True,
            poke_interval=1,
        )
        for child in ("child_ok", "child_bad")
    ]
    triggers >> report()
