"""A task's first start in its lineage is one guarded INSERT (decision 0121), in a real
deployment: what the task processes forked by the scheduler's LocalExecutor really sent.

``tests/unit/catalog/test_pipeline.py`` counts a start's round trips from one test process.
Here every component of the deployment (API server, scheduler, DAG processor, triggerer, the
task processes) reaches the PostgreSQL catalog through a recording proxy
(``tests/wire.py``: the catalog connection in ``AIRFLOW_CONN_BFX_CATALOG_DEFAULT`` points at
it), and the routed chain ``bfx_deploy_chain`` (``extract >> transform >> load``) runs four
times:

1. a first run: no task package is registered yet, so ``transform`` and ``load`` try the
   guarded INSERT, it matches nothing, and their starts read and decide (and register them);
2. a second run: ``extract`` has no upstream and reads first (it creates the batch, and reads
   its facts before and after that);
   ``transform`` and ``load`` are first starts in a fresh lineage: each is one guarded INSERT
   (``bfx_start_first_``) and no facts read (``bfx_task_facts_``);
3. a run whose ``load`` fails;
4. a new run that resumes it: the gate's evidence read says ``load`` has rows in the lineage,
   so its start reads first and never tries the guarded INSERT; it restarts (``R``), and what
   completed is skipped.

Each step also asserts Airflow's states, the catalog rows and what really ran (the ledger).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import make_url

from tests.deployment.catalogs import CatalogSetup, ledger, ran, wait_batch_closed
from tests.deployment.conftest import DEPLOY_DAGS, DeploymentFactory
from tests.deployment.harness import Deployment
from tests.wire import QueryRecorder

DAG_ID = "bfx_deploy_chain"
TASKS = ("extract", "transform", "load")
GUARDED = "bfx_start_first_"  # the guarded INSERT's prepared name (decision 0121)
FACTS = "bfx_task_facts_"  # the task-start facts read's


@dataclass
class Wired:
    deployment: Deployment
    catalog: CatalogSetup
    proxy: QueryRecorder
    ledgers: Path

    def run(self, conf: dict[str, object] | None = None) -> tuple[str, str, list[str]]:
        """Trigger one run; its run id, its state and the catalog queries sent meanwhile."""
        api = self.deployment.api
        before = len(self.proxy.queries)
        run_id = api.trigger(DAG_ID, conf=conf or {})
        state = api.wait_run(DAG_ID, run_id, timeout=180)
        wait_batch_closed(self.catalog, self.deployment, DAG_ID, run_id)
        return run_id, state, self.proxy.queries[before:]


def _starts(queries: list[str], run_id: str, task_id: str) -> tuple[int, int]:
    """(guarded INSERTs, facts reads) sent for the first try of ``task_id`` in ``run_id``:
    both carry the try's key ``dag/run/task/-1/1`` among their arguments."""
    key = f"'{DAG_ID}/{run_id}/{task_id}/-1/1'"
    mine = [q for q in queries if key in q]
    return sum(GUARDED in q for q in mine), sum(f"EXECUTE {FACTS}" in q for q in mine)


@pytest.fixture(scope="module")
def wired(
    deployment_factory: DeploymentFactory,
    pg_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Wired]:
    catalog = CatalogSetup.create("env", pg_server_url)
    server = make_url(pg_server_url)
    proxy = QueryRecorder(server.host or "127.0.0.1", server.port or 5432)
    via = make_url(catalog.url).set(host="127.0.0.1", port=proxy.port)
    ledgers = tmp_path_factory.mktemp("ledgers")
    try:
        deployment = deployment_factory(
            dags=[DEPLOY_DAGS / f"{DAG_ID}.py"],
            env={
                "AIRFLOW_CONN_BFX_CATALOG_DEFAULT": via.render_as_string(hide_password=False),
                "BFX_DEPLOY_LEDGER_DIR": str(ledgers),
            },
        )
        catalog.after_start(deployment)
        deployment.api.wait_dag_parsed(DAG_ID, timeout=90)
        yield Wired(deployment, catalog, proxy, ledgers)
    finally:
        proxy.sock.close()
        catalog.drop()


def test_first_starts_are_one_guarded_insert_and_a_resumed_task_reads_first(
    wired: Wired,
) -> None:
    deployment, catalog = wired.deployment, wired.catalog

    first, state, sent = wired.run()
    assert state == "success"
    # No upstream: reads first; it creates the run's batch, so it reads its facts twice (before
    # and after the batch start, decision 0105).
    assert _starts(sent, first, "extract") == (0, 2)
    for task in ("transform", "load"):  # packages not registered yet: tried, missed, read
        assert _starts(sent, first, task) == (1, 1), task

    second, state, sent = wired.run()
    assert state == "success"
    assert deployment.api.task_states(DAG_ID, second) == {(t, -1): "success" for t in TASKS}
    assert _starts(sent, second, "extract") == (0, 2)
    for task in ("transform", "load"):  # first starts in a fresh lineage: one statement each
        assert _starts(sent, second, task) == (1, 0), task
    rows = catalog.task_rows(deployment, DAG_ID, second)
    assert {t: (r.ExecutionStatus, r.NextLoadStatus) for t, r in rows.items()} == {
        t: ("S", "P") for t in TASKS
    }
    for task in ("transform", "load"):
        row = rows[task]
        assert row.OriginalExecutionID == row.AuditID == row.ExecutionID, task
        assert row.LineageID == rows["extract"].LineageID == row.ParentExecutionID, task
        assert (row.AttemptNumber, row.TryNumber, row.EndTime is not None) == (1, 1, True)
    assert ran(ledger(wired.ledgers, DAG_ID), second) == list(TASKS)

    failed, state, _ = wired.run({"fail": ["load"]})
    assert state == "failed"
    resumed, state, sent = wired.run()
    assert state == "success"
    states = deployment.api.task_states(DAG_ID, resumed)
    assert states == {
        ("extract", -1): "skipped",
        ("transform", -1): "skipped",
        ("load", -1): "success",
    }
    assert _starts(sent, resumed, "load") == (0, 1)  # rows in the lineage: reads first
    assert ran(ledger(wired.ledgers, DAG_ID), resumed) == ["load"]
    rows = catalog.task_rows(deployment, DAG_ID, resumed)
    assert (rows["load"].ExecutionStatus, rows["load"].AttemptNumber) == ("S", 2)
    assert rows["load"].LineageID == catalog.batch_row(deployment, DAG_ID, failed).LineageID
