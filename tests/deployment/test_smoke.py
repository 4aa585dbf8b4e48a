"""A real deployment (LocalExecutor, parallelism 4) runs a plain DAG end to end.

Also checks the authentication the harness sets up: anonymous requests are refused, the viewer
may read but not change a DAG run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deployment.conftest import DEPLOY_DAGS, DeploymentFactory
from tests.deployment.harness import HEALTHY_COMPONENTS, Deployment

DAG_ID = "bfx_deploy_smoke"


@pytest.fixture(scope="module")
def deployment(
    deployment_factory: DeploymentFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.txt"
    yield deployment_factory(
        dags=[DEPLOY_DAGS / "bfx_deploy_smoke.py"],
        env={"BFX_DEPLOY_LEDGER": str(ledger)},
        executor="LocalExecutor",
        parallelism=4,
    )


def test_healthy(deployment: Deployment) -> None:
    health = deployment.api.health()
    for component in HEALTHY_COMPONENTS:
        assert health[component]["status"] == "healthy", health
    assert set(deployment.pids()) == set(Deployment.CORE_COMPONENTS)


def test_smoke_dag_runs_to_success(deployment: Deployment) -> None:
    api = deployment.api
    api.wait_dag_parsed(DAG_ID, timeout=60)
    run_id = api.trigger(DAG_ID)
    assert api.wait_run(DAG_ID, run_id, timeout=60) == "success"
    assert api.task_states(DAG_ID, run_id) == {("first", -1): "success", ("second", -1): "success"}
    ledger = deployment.env["BFX_DEPLOY_LEDGER"]
    with open(ledger, encoding="utf-8") as lines:
        written = lines.read().splitlines()
    assert f"{DAG_ID} {run_id} first" in written
    assert f"{DAG_ID} {run_id} second" in written


def test_anonymous_is_refused(deployment: Deployment) -> None:
    assert deployment.anonymous().get("dags").status_code in (401, 403)


def test_viewer_reads_but_cannot_change_a_run(deployment: Deployment) -> None:
    api = deployment.api
    api.wait_dag_parsed(DAG_ID, timeout=60)
    run_id = api.trigger(DAG_ID)
    viewer = deployment.viewer
    assert viewer.get("dags").status_code == 200
    assert viewer.get(f"dags/{DAG_ID}/dagRuns/{run_id}").status_code == 200
    refused = viewer.patch(f"dags/{DAG_ID}/dagRuns/{run_id}", {"state": "failed"})
    assert refused.status_code == 403, refused.text
    assert api.wait_run(DAG_ID, run_id, timeout=60) == "success"
