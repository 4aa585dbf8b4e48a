"""A routed two-task DAG for the deployment tests: ``hold >> fixme``, ``fixme`` with
``trigger_rule="all_done"`` (it runs after ``hold`` whatever ``hold``'s outcome).

Each task appends ``<run_id> <task_id>`` to ``$BFX_DEPLOY_LEDGER_DIR/bfx_deploy_hold.ledger``
when it really runs, and fails when its task id is in the run's conf ``{"fail": [...]}``. With
``{"hold": true}``, ``hold`` writes ``hold.started`` in that folder and waits (up to 180 s) for
a ``hold.release`` file before it ends: a test acts while this run's batch exists and before
``fixme`` starts.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task


def _folder() -> Path:
    return Path(os.environ["BFX_DEPLOY_LEDGER_DIR"])


def _work(context: Any) -> None:
    ti, conf = context["ti"], context["dag_run"].conf or {}
    if ti.task_id == "hold" and conf.get("hold"):
        (_folder() / "hold.started").write_text(ti.run_id)
        deadline = time.monotonic() + 180
        while not (_folder() / "hold.release").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("hold: never released")
            time.sleep(0.2)
    if ti.task_id in (conf.get("fail") or []):
        raise RuntimeError(f"{ti.task_id}: injected failure")
    with open(_folder() / f"{ti.dag_id}.ledger", "a", encoding="utf-8") as out:
        out.write(f"{ti.run_id} {ti.task_id}\n")


@task
def hold(**context: Any) -> None:
    _work(context)


@task(trigger_rule="all_done")
def fixme(**context: Any) -> None:
    _work(context)


with DAG(
    dag_id="bfx_deploy_hold",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    hold() >> fixme()
