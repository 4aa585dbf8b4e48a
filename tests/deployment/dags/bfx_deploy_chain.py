"""A routed three-task chain for the deployment tests: ``extract >> transform >> load``.

Each task appends ``<run_id> <task_id>`` to ``$BFX_DEPLOY_LEDGER_DIR/bfx_deploy_chain.ledger``
(what really ran) and fails when its task id is in the run's conf ``{"fail": [...]}``, or
in ``{"fail_first_try": [...]}`` on its first try only (a run cleared afterwards succeeds).
``{"sleep": {"transform": 60}}`` makes a task sleep first (a process to kill with SIGKILL).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task


def _work(context: Any) -> None:
    ti, conf = context["ti"], context["dag_run"].conf or {}
    pause = (conf.get("sleep") or {}).get(ti.task_id)
    if pause:
        # Written aside, then renamed: the test polls for the file and must never read it
        # between its creation and its write (a CI run failed right after the file appeared,
        # and left it written: most likely int("") of an empty read).
        pid_file = Path(os.environ["BFX_DEPLOY_LEDGER_DIR"], f"{ti.task_id}.pid")
        aside = pid_file.with_suffix(".pid.tmp")
        aside.write_text(str(os.getpid()))
        os.replace(aside, pid_file)
        time.sleep(float(pause))
    if ti.task_id in (conf.get("fail") or []):
        raise RuntimeError(f"{ti.task_id}: injected failure")
    if ti.task_id in (conf.get("fail_first_try") or []) and ti.try_number == 1:
        raise RuntimeError(f"{ti.task_id}: injected failure (first try only)")
    ledger = Path(os.environ["BFX_DEPLOY_LEDGER_DIR"], f"{ti.dag_id}.ledger")
    with open(ledger, "a", encoding="utf-8") as out:
        out.write(f"{ti.run_id} {ti.task_id}\n")


@task
def extract(**context: Any) -> None:
    _work(context)


@task
def transform(**context: Any) -> None:
    _work(context)


@task
def load(**context: Any) -> None:
    _work(context)


with DAG(
    dag_id="bfx_deploy_chain",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    extract() >> transform() >> load()
