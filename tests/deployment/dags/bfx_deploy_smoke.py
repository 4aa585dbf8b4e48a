"""A plain (unrouted: no ``bfx`` tag) DAG for the deployment smoke test.

``first`` -> ``second``; each appends ``<dag_id> <run_id> <task_id>`` to the ledger file named
by ``$BFX_DEPLOY_LEDGER``.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task


def _record(ti: Any) -> None:
    with open(os.environ["BFX_DEPLOY_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{ti.dag_id} {ti.run_id} {ti.task_id}\n")
        ledger.flush()
        os.fsync(ledger.fileno())


@task
def first(ti: Any = None) -> None:
    _record(ti)


@task
def second(ti: Any = None) -> None:
    _record(ti)


with DAG(
    dag_id="bfx_deploy_smoke",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["deploy-smoke"],
):
    first() >> second()
