"""Every way a task or a DAG run ends reaches the catalog, in a real deployment.

DESIGN.md §4 "Airflow's outcome is evidence": tasks marked success or failed by hand through the
REST API (the API server runs no task callback), also while the resumed run goes on (only the
task's own start can adopt it then: decision 0115), a task process killed with SIGKILL, a deferrable
task resumed in a worker, a task that ends in the triggerer. Also: with the provider installed, an
unrouted DAG with an ``end_from_trigger=True`` task imports and runs (Airflow refuses such DAGs
as soon as any plugin listener is registered). The catalog connection is kept in the metadata DB
(``airflow connections add``), the hardest case for the scheduler and the CLI.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.deployment.catalogs import CatalogSetup, ledger, ran, wait_batch_closed
from tests.deployment.conftest import DEPLOY_DAGS, DeploymentFactory
from tests.deployment.harness import HEALTHY_COMPONENTS, Deployment

CHAIN = "bfx_deploy_chain"
HOLD = "bfx_deploy_hold"
DEFERRABLE = "bfx_deploy_deferrable"
END_FROM_TRIGGER = "bfx_deploy_end_from_trigger"
ADOPTED = "BFX_ADOPTED_AIRFLOW_STATE"


class Env:
    def __init__(self, deployment: Deployment, catalog: CatalogSetup, ledgers: Path) -> None:
        self.deployment, self.catalog, self.ledgers = deployment, catalog, ledgers
        self.api = deployment.api

    def run(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 180) -> str:
        run_id = self.api.trigger(dag_id, conf=conf)
        self.api.wait_run(dag_id, run_id, timeout=timeout)
        return run_id

    def adopted_errors(self, execution_id: int) -> list[str]:
        with self.catalog.store(self.deployment).engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT ErrorMessage FROM bfx.ExecutionError"
                        " WHERE ExecutionID = :e AND ErrorType = :t"
                    ),
                    {"e": execution_id, "t": ADOPTED},
                ).scalars()
            )

    def healthy(self) -> None:
        health = self.api.health()
        assert all(health[c]["status"] == "healthy" for c in HEALTHY_COMPONENTS), health


@pytest.fixture(scope="module")
def env(
    deployment_factory: DeploymentFactory,
    pg_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    catalog = CatalogSetup.create("metadata", pg_server_url)
    ledgers = tmp_path_factory.mktemp("ledgers")
    deployment = deployment_factory(
        dags=[
            DEPLOY_DAGS / "bfx_deploy_chain.py",
            DEPLOY_DAGS / "bfx_deploy_deferrable.py",
            DEPLOY_DAGS / "bfx_deploy_hold.py",
        ],
        env={
            **catalog.env(),
            "BFX_DEPLOY_LEDGER_DIR": str(ledgers),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
        },
        parallelism=4,
    )
    catalog.after_start(deployment)
    for dag_id in (CHAIN, DEFERRABLE, END_FROM_TRIGGER, HOLD):
        deployment.api.wait_dag_parsed(dag_id, timeout=90)
    try:
        yield Env(deployment, catalog, ledgers)
    finally:
        catalog.drop()


def _fresh_lineage(env: Env) -> None:
    """A clean successful run, so each scenario starts from a closed lineage."""
    run_id = env.run(CHAIN)
    assert env.api.task_states(CHAIN, run_id)[("load", -1)] == "success"
    wait_batch_closed(env.catalog, env.deployment, CHAIN, run_id)


def test_unrouted_end_from_trigger_dag_imports_and_runs(env: Env) -> None:
    assert not [e for e in env.api.import_errors() if "bfx_deploy_deferrable" in str(e)]
    run_id = env.run(END_FROM_TRIGGER)
    assert env.api.task_states(END_FROM_TRIGGER, run_id) == {("ends_in_triggerer", -1): "success"}
    assert env.catalog.rows(env.deployment, END_FROM_TRIGGER) == []  # unrouted: no rows


def test_deferrable_routed_tasks_reach_the_catalog(env: Env) -> None:
    run_id = env.run(DEFERRABLE)
    states = env.api.task_states(DEFERRABLE, run_id)
    assert set(states.values()) == {"success"}, states
    assert ran(ledger(env.ledgers, DEFERRABLE), run_id) == [
        "before",
        "wait:deferred",
        "wait:resumed",
        "ends_in_triggerer:deferred",
        "after",
    ]
    wait_batch_closed(env.catalog, env.deployment, DEFERRABLE, run_id)
    rows = env.catalog.task_rows(env.deployment, DEFERRABLE, run_id)
    # wait: ended by its own callback in the resuming worker; ends_in_triggerer: no callback
    # ever runs, Airflow's success is adopted when the run ends.
    assert {t: (r.ExecutionStatus, r.NextLoadStatus) for t, r in rows.items()} == {
        "before": ("S", "P"),
        "wait": ("S", "P"),
        "ends_in_triggerer": ("S", "P"),
        "after": ("S", "P"),
    }
    assert env.adopted_errors(rows["ends_in_triggerer"].ExecutionID)
    # Nothing of it runs again in the next run: a fresh lineage, all run once more.
    again = env.run(DEFERRABLE)
    assert set(env.api.task_states(DEFERRABLE, again).values()) == {"success"}


def test_marked_success_by_hand_is_not_run_again(env: Env) -> None:
    _fresh_lineage(env)
    run1 = env.run(CHAIN, conf={"fail": ["transform"]})
    assert env.api.task_states(CHAIN, run1) == {
        ("extract", -1): "success",
        ("transform", -1): "failed",
        ("load", -1): "upstream_failed",
    }
    failed = env.catalog.task_rows(env.deployment, CHAIN, run1)["transform"]
    assert (failed.ExecutionStatus, failed.NextLoadStatus) == ("F", "R")
    wait_batch_closed(env.catalog, env.deployment, CHAIN, run1)

    # The on-call fixed transform's data by hand and marks it success. Airflow 3 then schedules
    # the downstream load IN THAT RUN, and the run ends success.
    env.api.mark_task(CHAIN, run1, "transform", "success")
    deadline = time.monotonic() + 120
    while env.api.task_states(CHAIN, run1)[("load", -1)] != "success":
        assert time.monotonic() < deadline, env.api.task_states(CHAIN, run1)
        time.sleep(1)
    assert env.api.wait_run(CHAIN, run1, timeout=120) == "success"
    assert ran(ledger(env.ledgers, CHAIN), run1) == ["extract", "load"]  # transform: by hand
    deadline = time.monotonic() + 90
    while env.catalog.batch_row(env.deployment, CHAIN, run1).ExecutionStatus != "S":
        assert time.monotonic() < deadline, "the run's success never reached its batch"
        time.sleep(1)
    rows1 = env.catalog.task_rows(env.deployment, CHAIN, run1)
    adopted = rows1["transform"]
    assert (adopted.ExecutionStatus, adopted.NextLoadStatus) == ("S", "P")  # lineage closed
    assert env.adopted_errors(adopted.ExecutionID)
    assert rows1["load"].ExecutionStatus == "S"
    batch1 = env.catalog.batch_row(env.deployment, CHAIN, run1)
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("S", "P")
    # The lineage is closed: the next run is a fresh batch, nothing of run 1 resumed.
    run2 = env.run(CHAIN)
    assert set(env.api.task_states(CHAIN, run2).values()) == {"success"}
    batch2 = wait_batch_closed(env.catalog, env.deployment, CHAIN, run2)
    assert batch2.OriginalExecutionID == batch2.ExecutionID
    env.healthy()


def test_marked_failed_by_hand_runs_again(env: Env) -> None:
    _fresh_lineage(env)
    run1 = env.run(CHAIN)
    wait_batch_closed(env.catalog, env.deployment, CHAIN, run1)
    # The data of extract turned out bad: marked failed, and the run with it.
    env.api.mark_task(CHAIN, run1, "extract", "failed")
    env.api.mark_run(CHAIN, run1, "failed")
    run2 = env.run(CHAIN)
    assert ran(ledger(env.ledgers, CHAIN), run2)[0] == "extract"
    assert env.api.task_states(CHAIN, run2)[("extract", -1)] == "success"
    rows1 = env.catalog.task_rows(env.deployment, CHAIN, run1)
    assert rows1["extract"].ExecutionStatus == "F"
    assert env.adopted_errors(rows1["extract"].ExecutionID)
    batch2 = wait_batch_closed(env.catalog, env.deployment, CHAIN, run2)
    batch1 = env.catalog.batch_row(env.deployment, CHAIN, run1)
    assert batch1.ExecutionStatus == "F"
    assert batch2.OriginalExecutionID == batch1.ExecutionID  # resumed the failed lineage


def test_marked_success_by_hand_while_the_next_run_goes_on_is_adopted_by_the_tasks_start(
    env: Env,
) -> None:
    """The hand mark arrives after the resumed run's batch exists: only ``fixme``'s own start
    can adopt it, and it asks Airflow about its own task alone (decision 0115)."""
    run1 = env.run(HOLD, conf={"fail": ["hold", "fixme"]})
    assert env.api.task_states(HOLD, run1) == {("hold", -1): "failed", ("fixme", -1): "failed"}
    wait_batch_closed(env.catalog, env.deployment, HOLD, run1)
    rows1 = env.catalog.task_rows(env.deployment, HOLD, run1)
    assert (rows1["fixme"].ExecutionStatus, rows1["fixme"].NextLoadStatus) == ("F", "R")

    run2 = env.api.trigger(HOLD, conf={"hold": True})
    started = env.ledgers / "hold.started"
    deadline = time.monotonic() + 120
    while not started.exists():
        assert time.monotonic() < deadline, env.api.task_states(HOLD, run2)
        time.sleep(0.2)
    # hold runs (its gate created run 2's batch, resuming run 1's lineage); fixme waits for it.
    batch2 = env.catalog.batch_row(env.deployment, HOLD, run2)
    assert (
        batch2.OriginalExecutionID == env.catalog.batch_row(env.deployment, HOLD, run1).ExecutionID
    )
    assert env.api.task_states(HOLD, run2)[("fixme", -1)] is None
    # Meanwhile the on-call repairs fixme's data by hand and marks it success in run 1.
    env.api.mark_task(HOLD, run1, "fixme", "success")
    assert env.catalog.task_rows(env.deployment, HOLD, run1)["fixme"].ExecutionStatus == "F"
    (env.ledgers / "hold.release").write_text("go")

    assert env.api.wait_run(HOLD, run2, timeout=180) == "success"
    assert env.api.task_states(HOLD, run2) == {("hold", -1): "success", ("fixme", -1): "skipped"}
    assert ran(ledger(env.ledgers, HOLD), run2) == ["hold"]  # fixme: not run again
    adopted = env.catalog.task_rows(env.deployment, HOLD, run1)["fixme"]
    assert adopted.ExecutionStatus == "S"
    assert env.adopted_errors(adopted.ExecutionID)
    fixme2 = env.catalog.task_rows(env.deployment, HOLD, run2)["fixme"]
    assert fixme2.ExecutionStatus == "C"
    env.healthy()


def test_killed_task_process_is_closed_and_retried_next_run(env: Env) -> None:
    _fresh_lineage(env)
    run1 = env.api.trigger(CHAIN, conf={"sleep": {"transform": 300}})
    pid_file = env.ledgers / "transform.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert time.monotonic() < deadline, "transform never started"
        time.sleep(0.5)
    pid = int(pid_file.read_text())
    pid_file.unlink()
    os.kill(pid, signal.SIGKILL)
    assert env.api.wait_run(CHAIN, run1, timeout=180) == "failed"
    assert env.api.task_states(CHAIN, run1)[("transform", -1)] == "failed"
    batch1 = wait_batch_closed(env.catalog, env.deployment, CHAIN, run1)
    killed = env.catalog.task_rows(env.deployment, CHAIN, run1)["transform"]
    assert killed.ExecutionStatus == "F" and killed.NextLoadStatus == "R"
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")

    run2 = env.run(CHAIN)
    assert env.api.task_states(CHAIN, run2) == {
        ("extract", -1): "skipped",
        ("transform", -1): "success",
        ("load", -1): "success",
    }
    assert ran(ledger(env.ledgers, CHAIN), run2) == ["transform", "load"]
    env.healthy()
