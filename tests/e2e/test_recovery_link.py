"""``[bfx] recovery_link`` (decision 0112): the "Recovery" operator extra link, and its XCom.

Airflow 3 computes an operator's links in the task process when a try ends and stores each one
as an XCom (``_link_RecoveryLink``); the API server only reads it back. The link is on by
default; off, the routing installs no link, so no try writes that XCom, and nothing else of the
routing changes.

A mapped task's instances store it too, each with the URL of its own map index: Airflow's
``MappedOperator.unmap`` builds the operator a try runs from its class, so the gate carries the
link the routing set on the mapped operator over to it (the mapped tests below).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import Catalog, load_dag, run_dag

from airflow_provider_bfx.callbacks import bfx_pre_execute
from airflow_provider_bfx.plugins.links import RecoveryLink, recovery_path
from airflow_provider_bfx.plugins.routes import TASK_ROUTE
from airflow_provider_bfx.routing.install import route_tasks
from airflow_provider_bfx.routing.settings import BfxSettingsError, load_settings

pytestmark = pytest.mark.slow

LINK_KEY = "_link_RecoveryLink"
MAPPED_DAG = "bfx_e2e_items"  # process.expand(x=[1, 2, 3]) then summary


def links_of(task: Any) -> list[Any]:
    return [link for link in task.operator_extra_links if isinstance(link, RecoveryLink)]


def xcom_keys(dag_id: str, run_id: str) -> set[tuple[str, str]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.key).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id
            )
        ).all()
    return {(r.task_id, r.key) for r in rows}


def link_values(dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
    """The ``_link_RecoveryLink`` XCom of each (task_id, map_index) of one run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.map_index, XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == LINK_KEY
            )
        ).all()
    return {(r.task_id, r.map_index): XComModel.deserialize_value(r) for r in rows}


def expected_url(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """What ``RecoveryLink.get_link`` builds: ``[api] base_url`` and the recovery view's path."""
    from airflow_provider_bfx.routing.settings import airflow_conf

    base = (airflow_conf().get("api", "base_url", fallback="") or "").rstrip("/")
    return base + recovery_path(dag_id, run_id, task_id, map_index)


def test_the_link_is_on_by_default_and_each_try_stores_it(catalog: Catalog) -> None:
    dag = load_dag("bfx_e2e_tiny")
    for task in dag.tasks:
        assert len(links_of(task)) == 1, task.task_id
    run = run_dag("bfx_e2e_tiny")
    assert run.state == "success"
    assert {("work", LINK_KEY), ("after", LINK_KEY)} <= xcom_keys("bfx_e2e_tiny", run.run_id)


def test_each_instance_of_a_mapped_task_stores_the_link_of_its_map_index(
    catalog: Catalog,
) -> None:
    dag = load_dag(MAPPED_DAG)
    assert len(links_of(dag.task_dict["process"])) == 1  # the mapped operator carries it
    run = run_dag(MAPPED_DAG)
    assert run.state == "success", run.states
    instances = [("process", 0), ("process", 1), ("process", 2), ("summary", -1)]
    assert link_values(MAPPED_DAG, run.run_id) == {
        (task_id, map_index): expected_url(MAPPED_DAG, run.run_id, task_id, map_index)
        for task_id, map_index in instances
    }
    # The map index is in the URL: each instance opens its own recovery view.
    assert expected_url(MAPPED_DAG, run.run_id, "process", 1).endswith(
        f"/tasks/process/mapped/1/plugin/{TASK_ROUTE}"
    )


def test_failed_and_skipped_mapped_instances_store_their_links_too(catalog: Catalog) -> None:
    # The instance a user opens the Recovery view for: its try failed in its own work.
    run1 = run_dag(MAPPED_DAG, {"fail_items": [2]})
    assert run1.state == "failed", run1.states
    assert run1.state_of("process", 1) == "failed"
    assert run1.state_of("summary") == "upstream_failed"  # no try: no link
    assert link_values(MAPPED_DAG, run1.run_id) == {
        ("process", i): expected_url(MAPPED_DAG, run1.run_id, "process", i) for i in range(3)
    }
    # The resumed run: items 1 and 3 are skipped by their own gates (a mapped instance is never
    # skipped ahead, decision 0106), which carried the link over before they decided.
    run2 = run_dag(MAPPED_DAG)
    assert run2.state == "success", run2.states
    assert [run2.state_of("process", i) for i in range(3)] == ["skipped", "success", "skipped"]
    instances = [("process", 0), ("process", 1), ("process", 2), ("summary", -1)]
    assert link_values(MAPPED_DAG, run2.run_id) == {
        (task_id, i): expected_url(MAPPED_DAG, run2.run_id, task_id, i) for task_id, i in instances
    }


def test_recovery_link_false_installs_no_link_and_no_try_stores_one(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__RECOVERY_LINK", "False")
    dag = load_dag("bfx_e2e_tiny")
    for task in dag.tasks:
        assert links_of(task) == [], task.task_id
        assert task._pre_execute_hook is bfx_pre_execute  # the rest of the routing is there
    run = run_dag("bfx_e2e_tiny")
    assert run.state == "success"
    keys = xcom_keys("bfx_e2e_tiny", run.run_id)
    assert ("work", "return_value") in keys
    assert not {k for k in keys if k[1] == LINK_KEY}
    assert [r.TaskId for r in catalog.rows("bfx_e2e_tiny", run.run_id) if r.TaskId] == [
        "work",
        "after",
    ]


def test_recovery_link_false_stores_no_link_for_a_mapped_instance_either(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__RECOVERY_LINK", "False")
    dag = load_dag(MAPPED_DAG)
    assert links_of(dag.task_dict["process"]) == []
    run = run_dag(MAPPED_DAG)
    assert run.state == "success", run.states
    assert link_values(MAPPED_DAG, run.run_id) == {}
    keys = xcom_keys(MAPPED_DAG, run.run_id)
    assert {("process", "return_value"), ("summary", "return_value")} <= keys


def test_a_recovery_link_value_that_is_not_a_boolean_keeps_the_link_and_fails_the_task(
    catalog: Catalog,
    copies_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__RECOVERY_LINK", "sometimes")
    with pytest.raises(BfxSettingsError, match=r"\[bfx\] recovery_link = 'sometimes'"):
        load_settings()
    with caplog.at_level(logging.ERROR, logger="airflow_provider_bfx.routing"):
        dag = load_dag("bfx_e2e_tiny")
        route_tasks(dag)  # idempotent: still one link
    assert all(len(links_of(task)) == 1 for task in dag.tasks)
    assert "recovery_link = 'sometimes' is not a boolean; the Recovery link is kept" in caplog.text
    run = run_dag("bfx_e2e_tiny")
    assert run.state == "failed"
    assert run.state_of("work") == "failed"
    # Failed by its gate (load_settings, above) before any work; nothing written anywhere.
    assert not (copies_dir / "executions").exists()
    if catalog.kind == "postgresql":
        assert catalog.rows("bfx_e2e_tiny", run.run_id) == []
