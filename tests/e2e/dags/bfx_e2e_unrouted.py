"""A DAG that did not opt in: the provider must leave it exactly as written."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task


@task
def first() -> int:
    return 1


@task
def second(value: int) -> int:
    return value + 1


with DAG(
    dag_id="bfx_e2e_unrouted",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["plain"],
):
    second(first())
