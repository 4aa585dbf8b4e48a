"""The execution handle as a task sees it: ``bfx`` as an argument, checkpoints, row counts, and
a lease that outlives ``[bfx] lease_duration`` because it is renewed while the task runs.

``long_running`` sleeps ``$BFX_E2E_SLEEP`` seconds, then runs the catalog's expiry scan itself
(what a batch start of any other DAG would do at that moment): if its lease had not been renewed,
that scan would abort its own execution.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task


@task
def long_running(bfx) -> dict[str, Any]:  # noqa: ANN001 - no default: "bfx" is a context key
    time.sleep(float(os.environ.get("BFX_E2E_SLEEP") or "0"))
    assert bfx.store is not None
    expired = bfx.store.expire_leases()
    bfx.checkpoint("probe", {"seen": bfx.execution_id})
    bfx.log_row_count("staging.orders", "inserted", 42)
    return {
        "execution_id": bfx.execution_id,
        "batch_execution_id": bfx.batch_execution_id,
        "status": bfx.status.value,
        "audit_id": bfx.audit_id,
        "checkpoint": bfx.get_checkpoint("probe"),
        "expired": [e.execution_id for e in expired],
    }


with DAG(
    dag_id="bfx_e2e_handle",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    long_running()
