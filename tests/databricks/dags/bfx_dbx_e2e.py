"""Two tables, each a ``BfxDatabricksOperator`` against the fake Databricks of the tests.

``load_customer`` starts job 42 (run-now) and has one Airflow retry; ``load_orders`` submits a
one-time run (``run_name`` "orders"). Every copy appends ``<task_id> <audit_id>`` to
``$BFX_EXAMPLE_COPY_DIR/copies``; ``{"fail_copy": [task_id, ...]}`` in the run's conf fails those
copies.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from airflow_provider_bfx.operators.databricks import BfxDatabricksOperator

ROWS = {"load_customer": {"dw.customer": 1200}, "load_orders": {"dw.orders": 3400}}


def copy_table(context: Any, audit_id: int | None) -> dict[str, Any]:
    task_id = context["ti"].task_id
    if task_id in ((context["dag_run"].conf or {}).get("fail_copy") or []):
        raise RuntimeError(f"{task_id}: injected copy failure")
    with open(Path(os.environ["BFX_EXAMPLE_COPY_DIR"]) / "copies", "a", encoding="utf-8") as out:
        out.write(f"{task_id} {audit_id}\n")
    return {"rows": ROWS[task_id]}


with DAG(
    dag_id="bfx_dbx_e2e",
    start_date=datetime(2024, 1, 1),
    schedule=None,
    tags=["bfx"],
):
    BfxDatabricksOperator(
        task_id="load_customer",
        copy=copy_table,
        job_id=42,
        job_parameters={"table": "customer"},
        polling_period_seconds=0.05,
        databricks_retry_limit=1,
        retries=1,
        retry_delay=timedelta(0),
    )
    BfxDatabricksOperator(
        task_id="load_orders",
        copy=copy_table,
        json={
            "run_name": "orders",
            "tasks": [{"task_key": "orders", "notebook_task": {"notebook_path": "/bfx/orders"}}],
        },
        polling_period_seconds=0.05,
        databricks_retry_limit=1,
    )
