"""``[bfx] recovery_link = False`` (decision 0112) in a real deployment: no "Recovery" link, no
``_link_RecoveryLink`` XCom, and the routing otherwise unchanged.

``tests/e2e/test_recovery_link.py`` proves the option under ``dag.test()``, where one process
parses the DAG, runs every try and reads the result back. A deployment splits that across
processes, each of which must see the option on its own:

* the DAG processor parses the DAG file and serializes it; ``route_tasks`` reads
  ``[bfx] recovery_link`` there, at parse time, and decides whether the serialized operators
  carry the link (``_operator_extra_links``), which is what the API server knows of the task;
* each task process parses the file again and, when its try ends, pushes one XCom per operator
  link of *its* parse (Airflow 3's ``task_runner.finalize``), through the Execution API;
* the API server computes nothing: ``/links`` reads the serialized DAG's links and their XComs.

So the option must reach the DAG processor and every task process through the deployment's own
configuration (here ``AIRFLOW__BFX__RECOVERY_LINK=False`` in the environment of every
component), which only a deployment shows. One deployment, one run of the routed mapped DAG
``bfx_deploy_items`` (``process`` over ``[1, 2, 3]``, then ``summary``: four task instances,
each with a return value), the catalog in PostgreSQL (``AIRFLOW_CONN_BFX_CATALOG_DEFAULT``).
It asserts:

1. the run succeeds and the catalog holds a successful row for every task instance and a
   closed batch: the routing works with the link off;
2. the API server lists no link for any task instance (``/links``);
3. no serialized version of the DAG in the metadata DB carries "Recovery", while its tasks
   carry the routing's ``none_failed`` trigger rule (the DAG processor did route them). The
   public ``GET dags/{dag}/tasks/{task}`` is asked too, but Airflow 3.3.2 answers
   ``extra_links: []`` there with the link on as well: the serialized DAG is what tells;
4. the run's XComs, from the API server and from the metadata DB, are exactly the four return
   values: no try stored ``_link_RecoveryLink``.

Checked against the option ignored (the variable removed, and set to ``True``): 2, 3 and 4
fail, 1 passes (it checks that turning the link off costs the routing nothing). At that time,
with the link on, only ``summary`` stored ``_link_RecoveryLink``: a mapped instance of
``process`` stored none and ``/links`` showed it ``{"Recovery": None}``, because Airflow's
``MappedOperator.unmap`` builds the operator a task process runs from its class, without the
link the routing set on the mapped operator. The gate now carries that link over (decision 0112;
``test_scenarios_deployment.py`` shows each mapped instance's link); with the option off the
mapped operator has none, so there is nothing to carry.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.deployment.catalogs import CatalogSetup, ledger, ran, wait_batch_closed
from tests.deployment.conftest import DEPLOY_DAGS, DeploymentFactory
from tests.deployment.harness import Deployment

DAG_ID = "bfx_deploy_items"
LINK_KEY = "_link_RecoveryLink"
#: Every task instance of a run: ``process`` over the default ``[1, 2, 3]``, then ``summary``.
TASK_INSTANCES = [("process", 0), ("process", 1), ("process", 2), ("summary", -1)]
OPTION = {"AIRFLOW__BFX__RECOVERY_LINK": "False"}


@dataclass
class LinkOff:
    deployment: Deployment
    catalog: CatalogSetup
    ledgers: Path
    run_id: str
    state: str

    def metadata(self, sql: str, **params: Any) -> list[Any]:
        """Rows of a query on the deployment's metadata DB."""
        engine = create_engine(self.deployment.metadata_db_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def link_off(
    deployment_factory: DeploymentFactory,
    pg_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LinkOff]:
    catalog = CatalogSetup.create("env", pg_server_url)
    ledgers = tmp_path_factory.mktemp("ledgers")
    try:
        deployment = deployment_factory(
            dags=[DEPLOY_DAGS / f"{DAG_ID}.py"],
            env={**catalog.env(), "BFX_DEPLOY_LEDGER_DIR": str(ledgers), **OPTION},
        )
        catalog.after_start(deployment)
        api = deployment.api
        api.wait_dag_parsed(DAG_ID, timeout=90)
        run_id = api.trigger(DAG_ID)
        state = api.wait_run(DAG_ID, run_id, timeout=180)
        yield LinkOff(deployment, catalog, ledgers, run_id, state)
    finally:
        catalog.drop()


def test_the_routed_run_succeeds_and_writes_its_catalog_rows(link_off: LinkOff) -> None:
    deployment, catalog, run_id = link_off.deployment, link_off.catalog, link_off.run_id
    states = deployment.api.task_states(DAG_ID, run_id)
    assert link_off.state == "success", states
    assert states == {ti: "success" for ti in TASK_INSTANCES}
    assert Counter(ran(ledger(link_off.ledgers, DAG_ID), run_id)) == Counter(
        ["item:1", "item:2", "item:3", "summary:[10, 20, 30]"]
    )
    latest: dict[tuple[str, int], Any] = {}
    for row in catalog.rows(deployment, DAG_ID, run_id):
        if row.TaskId is not None:
            latest[(row.TaskId, row.MapIndex)] = row
    assert {ti: row.ExecutionStatus for ti, row in latest.items()} == {
        ti: "S" for ti in TASK_INSTANCES
    }
    batch = wait_batch_closed(catalog, deployment, DAG_ID, run_id)
    assert (batch.ExecutionStatus, batch.NextLoadStatus) == ("S", "P")


def _serialized_tasks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The serialized operators of one ``serialized_dag`` row, by task id."""
    tasks = [entry.get("__var", entry) for entry in data["dag"]["tasks"]]
    return {task["task_id"]: task for task in tasks}


def test_the_api_server_lists_no_link_for_any_task_instance(link_off: LinkOff) -> None:
    api, run_id = link_off.deployment.api, link_off.run_id
    for task_id, map_index in TASK_INSTANCES:
        links = api.call(
            "GET",
            f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/links",
            params={"map_index": map_index},
        )
        # With the link on: {"Recovery": <url>}, a mapped instance's that of its map index.
        assert links["extra_links"] == {}, (task_id, map_index, links)


def test_the_dag_processor_serialized_the_routed_dag_without_the_link(link_off: LinkOff) -> None:
    api = link_off.deployment.api
    reported = {}
    for task_id in ("process", "summary"):
        task = api.call("GET", f"dags/{DAG_ID}/tasks/{task_id}")
        # Routed at parse time by the DAG processor: the routing's trigger rule is there.
        assert task["trigger_rule"] == "none_failed", task
        # Airflow 3.3.2's TaskResponse reports [] here whatever the operator's links are (it
        # reads an attribute its own model does not have); checked all the same, for a later
        # Airflow that reports them. What the API server knows is the serialized DAG, below.
        reported[task_id] = task["extra_links"]
        assert "Recovery" not in task["extra_links"], task

    # Every version of the DAG the DAG processor serialized in this deployment.
    rows = link_off.metadata(
        "SELECT data, data_compressed FROM serialized_dag WHERE dag_id = :dag_id", dag_id=DAG_ID
    )
    assert rows
    for row in rows:
        data = (
            row.data if row.data is not None else json.loads(zlib.decompress(row.data_compressed))
        )
        tasks = _serialized_tasks(data)
        assert set(tasks) == {"process", "summary"}
        for task_id, task in tasks.items():
            links = task.get("_operator_extra_links") or {}
            assert "Recovery" not in links and LINK_KEY not in links.values(), (
                task_id,
                links,
                f"tasks endpoint's extra_links: {reported}",
            )


def test_no_try_stores_the_link_xcom(link_off: LinkOff) -> None:
    run_id = link_off.run_id
    # Every XCom of the run, any task (``~``), as the API server reads them.
    answer = link_off.deployment.api.call(
        "GET",
        f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/~/xcomEntries",
        params={"limit": 100},
    )
    from_api = {(x["task_id"], x["map_index"], x["key"]) for x in answer["xcom_entries"]}
    expected = {(task_id, map_index, "return_value") for task_id, map_index in TASK_INSTANCES}
    assert answer["total_entries"] == len(from_api)
    assert from_api == expected, sorted(from_api)
    # The same from the metadata DB (nothing hidden by the API's filters).
    rows = link_off.metadata(
        "SELECT task_id, map_index, key FROM xcom WHERE dag_id = :dag_id AND run_id = :run_id",
        dag_id=DAG_ID,
        run_id=run_id,
    )
    assert {(r.task_id, r.map_index, r.key) for r in rows} == expected
    assert not [r for r in rows if r.key == LINK_KEY]
