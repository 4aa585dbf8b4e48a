"""Deferrable tasks in a real deployment: a ROUTED DAG with a task that defers and resumes in a
worker and one that ends in the triggerer, and an UNROUTED DAG whose task ends in the triggerer
(``end_from_trigger=True``), which Airflow refuses as soon as any plugin listener is registered.
Each step appends ``<run_id> <what>`` to ``$BFX_DEPLOY_LEDGER_DIR/<dag_id>.ledger``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import DAG, BaseOperator, task


def _ledger(dag_id: str, run_id: str, what: str) -> None:
    path = Path(os.environ["BFX_DEPLOY_LEDGER_DIR"], f"{dag_id}.ledger")
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{run_id} {what}\n")


class WaitThenRecord(BaseOperator):
    """Defers for a second, then resumes in a worker and records it."""

    def execute(self, context: Any) -> None:
        _ledger(self.dag_id, context["run_id"], f"{self.task_id}:deferred")
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=1)), method_name="resume")

    def resume(self, context: Any, event: Any = None) -> str:
        _ledger(self.dag_id, context["run_id"], f"{self.task_id}:resumed")
        return "resumed"


class EndsInTriggerer(BaseOperator):
    """Defers from a worker to a trigger that ends the task in the triggerer (no resume)."""

    end_from_trigger = True

    def execute(self, context: Any) -> None:
        _ledger(self.dag_id, context["run_id"], f"{self.task_id}:deferred")
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=1), end_from_trigger=True),
            method_name="never_called",
        )

    def never_called(self, context: Any, event: Any = None) -> None:  # pragma: no cover
        _ledger(self.dag_id, context["run_id"], f"{self.task_id}:resumed-in-worker")


@task
def before(**context: Any) -> None:
    _ledger(context["ti"].dag_id, context["run_id"], "before")


@task
def after(**context: Any) -> None:
    _ledger(context["ti"].dag_id, context["run_id"], "after")


with DAG(
    dag_id="bfx_deploy_deferrable",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
):
    (
        before()
        >> WaitThenRecord(task_id="wait")
        >> EndsInTriggerer(task_id="ends_in_triggerer")
        >> after()
    )

with DAG(
    dag_id="bfx_deploy_end_from_trigger",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["deploy-unrouted"],
):
    EndsInTriggerer(task_id="ends_in_triggerer")
