"""Nightly table loads, each a copy step then a Databricks compute step (DESIGN.md §6).

Tagged ``bfx``, so every task is routed through the catalog. Each table is one
``BfxDatabricksOperator``: ``copy`` lands the source extract under the task's audit ID and
returns its row counts; the compute step is the table's Databricks job (``run-now``, the audit
ID in the job parameter ``audit_id``), or for ``fact_sales`` a one-time notebook run.

When the compute step of a table fails, its copy has already landed: the next run (or an
Airflow retry) does NOT copy again, and starts the job with the audit ID of the landed data
(``[BFX_COMPUTE_ONLY_RESTART]``). When the copy fails, the next run copies again under a new
audit ID. A try that lost its worker while the job ran reattaches to the running job.

Connection ``databricks_default``: the workspace URL as host, a personal access token (or a
service principal) as the Databricks provider documents.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_bfx.operators.databricks import BfxDatabricksOperator

#: table -> Databricks job ID of its compute step
TABLES = {"dim_customer": 1101, "dim_product": 1102, "dim_store": 1103}


def copy_extract(context: Any, audit_id: int | None) -> dict[str, Any]:
    """Land the table's source extract in the lake, tagged with ``audit_id``.

    Replace the body with the real copy (an ADF pipeline, a cloud copy, a JDBC extract); return
    ``{"rows": {"<object>": <rows inserted>}}`` so the catalog records the row counts."""
    table = context["ti"].task_id.removeprefix("load_")
    rows = 1000  # what the real copy reports
    return {"rows": {f"landing.{table}": rows}, "landed_at": context["ts"]}


with DAG(
    dag_id="databricks_tables",
    start_date=datetime(2024, 1, 1),
    schedule="@daily",
    catchup=False,
    tags=["bfx", "databricks"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
):
    dimensions = [
        BfxDatabricksOperator(
            task_id=f"load_{table}",
            copy=copy_extract,
            job_id=job_id,
            job_parameters={"table": table, "ds": "{{ ds }}"},
            polling_period_seconds=30,
        )
        for table, job_id in TABLES.items()
    ]
    fact_sales = BfxDatabricksOperator(
        task_id="load_fact_sales",
        copy=copy_extract,
        json={
            "run_name": "fact_sales {{ ds }}",
            "tasks": [
                {
                    "task_key": "fact_sales",
                    "notebook_task": {
                        "notebook_path": "/Repos/warehouse/fact_sales",
                        "base_parameters": {"ds": "{{ ds }}"},
                    },
                    "environment_key": "default",
                }
            ],
            "environments": [{"environment_key": "default", "spec": {"client": "1"}}],
        },
        polling_period_seconds=30,
    )
    dimensions >> fact_sales
