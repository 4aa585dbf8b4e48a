"""The 50-table story in a real deployment, on each catalog configuration, and the recovery
view (the plugin's API and pages) in the deployment of one of them.

API server, scheduler, DAG processor, triggerer, LocalExecutor (parallelism 4), PostgreSQL
metadata DB; the catalog is a connection added with ``airflow connections add``, an environment
variable, or the embedded default. The story itself (and what it asserts) is in
``fifty_tables.py``; the recovery view's checks run in the ``metadata`` deployment (the API
server must resolve the catalog connection from the metadata DB), after its story.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.deployment.browser import Browser
from tests.deployment.catalogs import KINDS, CatalogSetup, ledger, ran, wait_batch_closed
from tests.deployment.conftest import DEPLOY_DAGS, DeploymentFactory
from tests.deployment.fifty_tables import DAG_FILE, DAG_ID, TABLES, play_fifty_table_story
from tests.deployment.harness import ADMIN_PASSWORD, ADMIN_USER, Deployment

REPO = Path(__file__).resolve().parents[2]
#: The deployment whose story is also read through the recovery view.
UI_KIND = "metadata"
CHAIN = "bfx_deploy_chain"
API = "/bfx/api/v1"
SCREENSHOTS = Path(os.environ.get("BFX_SCREENSHOT_DIR", REPO / ".artifacts" / "screenshots"))

Setup = tuple[Deployment, CatalogSetup, Path, Path]


@pytest.fixture(scope="module", params=KINDS)
def setup(
    request: pytest.FixtureRequest,
    deployment_factory: DeploymentFactory,
    pg_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    catalog = CatalogSetup.create(request.param, pg_server_url)
    copies = tmp_path_factory.mktemp("copies")
    ledgers = tmp_path_factory.mktemp("ledgers")
    deployment = deployment_factory(
        dags=[DAG_FILE, DEPLOY_DAGS / f"{CHAIN}.py"],
        env={
            **catalog.env(),
            "BFX_EXAMPLE_COPY_DIR": str(copies),
            "BFX_DEPLOY_LEDGER_DIR": str(ledgers),
        },
        parallelism=4,
    )
    catalog.after_start(deployment)
    try:
        yield deployment, catalog, copies, ledgers
    finally:
        deployment.stop()  # before the next configuration starts: one deployment at a time
        catalog.drop()


def _cards(view: Browser, selector: str, key: str) -> dict[str, int]:
    """The figure cards of a view: {their key attribute: the number they show}."""
    return {
        card.get_attribute(key): int(card.find_element("css selector", "b").text)
        for card in view.css(selector)
    }


#: What the story test saw, for the recovery view's tests of the same deployment.
STORY: dict[str, dict[str, Any]] = {}


def test_fifty_table_story(setup: Setup) -> None:
    deployment, catalog, copies, _ = setup
    seen: dict[str, Any] = {}

    def between_runs(run1: str) -> None:
        # The 2 a.m. look: run 1 failed; what will the next run do? (API as the read-only user.)
        if catalog.kind == UI_KIND:
            seen["plan"] = deployment.viewer.call("GET", f"{API}/dags/{DAG_ID}/plan")
            with Browser(deployment.base_url, SCREENSHOTS) as browser:
                browser.login(ADMIN_USER, ADMIN_PASSWORD)
                with browser.view(f"/dags/{DAG_ID}/plugin/bfx-recovery-dag", "dag") as view:
                    seen["plan_totals"] = _cards(view, "#plan-totals .card", "data-action")
                    seen["plan_summary"] = view.one("#plan-summary").text
                    view.shot("recovery-dag-after-failure")

    run1, run2 = play_fifty_table_story(deployment, catalog, copies, between_runs=between_runs)
    STORY[catalog.kind] = {"run1": run1, "run2": run2, **seen}
    if catalog.kind == UI_KIND:
        plan = seen["plan"]
        assert plan["resumes"] is True and plan["attempt"] == 2
        assert plan["totals"] == {"retry": 1, "run": 4, "skip": 47}
        retried = [t for t in plan["tasks"] if t["action"] == "retry"]
        assert [t["task_id"] for t in retried] == ["load_table_48"]
        assert seen["plan_totals"] == {"retry": 1, "run": 4, "skip": 47}
        assert "Resumes lineage" in seen["plan_summary"]


ui = pytest.mark.parametrize("setup", [UI_KIND], indirect=True)


def _failed_chain(setup: Setup, conf: dict[str, Any]) -> tuple[str, Any]:
    """A run of the chain that fails as ``conf`` asks; its id and its batch row once closed."""
    deployment, catalog, _, _ = setup
    api = deployment.api
    api.wait_dag_parsed(CHAIN, timeout=90)
    failed = api.trigger(CHAIN, conf=conf)
    assert api.wait_run(CHAIN, failed, timeout=180) == "failed"
    return failed, wait_batch_closed(catalog, deployment, CHAIN, failed)


@ui
def test_recovery_api_is_behind_airflow_auth(setup: Setup) -> None:
    """Anonymous: refused. Read-only user: reads every route, may not reset or recover. The
    routes answer from the catalog the API server resolved from the metadata DB."""
    deployment, catalog, _, _ = setup
    story = STORY[UI_KIND]
    anonymous, viewer = deployment.anonymous(), deployment.viewer
    for method, path in [
        ("GET", f"{API}/overview"),
        ("GET", f"{API}/dags/{DAG_ID}/plan"),
        ("GET", f"{API}/dags/{DAG_ID}/batches"),
        ("GET", f"{API}/batches/1"),
        ("POST", f"{API}/dags/{DAG_ID}/reset"),
        ("POST", f"{API}/recover"),
        ("GET", f"/bfx/ui/dags/{DAG_ID}"),
    ]:
        answer = anonymous.request(method, path)
        assert answer.status_code in (401, 403), (method, path, answer.status_code)

    batches = viewer.call("GET", f"{API}/dags/{DAG_ID}/batches", params={"limit": 1})
    assert [b["run_id"] for b in batches["batches"]] == [story["run2"]]
    older = viewer.call(
        "GET", f"{API}/dags/{DAG_ID}/batches", params={"limit": 1, "before": batches["next_before"]}
    )
    assert [b["run_id"] for b in older["batches"]] == [story["run1"]]
    assert older["next_before"] is None
    run2 = batches["batches"][0]
    assert (run2["attempt"], run2["status"], run2["task_counts"]) == (2, "S", {"C": 47, "S": 5})

    detail = viewer.call("GET", f"{API}/batches/{run2['execution_id']}")
    rows = {t["task_id"]: t for t in detail["tasks"]}
    run1_rows = catalog.task_rows(deployment, DAG_ID, story["run1"])
    for table in TABLES[:47]:
        row = rows[f"load_{table}"]
        assert row["status"] == "C"
        assert row["decided_by"] == run1_rows[f"load_{table}"].ExecutionID  # the reused one
    assert rows["load_table_48"]["status"] == "S"
    assert rows["load_table_48"]["decided_by"] == run1_rows["load_table_48"].ExecutionID
    assert rows["load_table_48"]["attempt"] == 2

    history = viewer.call("GET", f"{API}/dags/{DAG_ID}/tasks/load_table_48/executions")
    assert [(e["attempt"], e["status"]) for e in history["executions"]] == [(2, "S"), (1, "F")]
    overview = viewer.call("GET", f"{API}/overview", params={"limit": 1})
    assert overview["total"] == 1 and overview["next_after"] is None  # the chain has not run
    (wh,) = overview["dags"]
    assert (wh["dag_id"], wh["last_batch"]["run_id"], wh["waiting"]) == (DAG_ID, story["run2"], [])
    assert set(viewer.call("GET", "/bfx/openapi.json")["paths"]) >= {
        "/api/v1/dags/{dag_id}/plan",
        "/api/v1/dags/{dag_id}/batches",
        "/api/v1/batches/{execution_id}",
        "/api/v1/dags/{dag_id}/reset",
        "/api/v1/recover",
    }

    before = viewer.call("GET", f"{API}/dags/{DAG_ID}/plan")
    refused = viewer.post(f"{API}/dags/{DAG_ID}/reset", {"task_id": "load_table_01"})
    assert refused.status_code == 403, refused.text
    assert viewer.post(f"{API}/recover").status_code == 403
    assert viewer.call("GET", f"{API}/dags/{DAG_ID}/plan") == before  # nothing changed

    # The extra link "Recovery" of a routed task, computed by its task process.
    links = viewer.call(
        "GET", f"dags/{DAG_ID}/dagRuns/{story['run2']}/taskInstances/load_table_48/links"
    )
    run2_path = quote(story["run2"], safe="")
    assert links["extra_links"]["Recovery"].endswith(
        f"/dags/{DAG_ID}/runs/{run2_path}/tasks/load_table_48/plugin/bfx-recovery-task"
    )


@ui
def test_recovery_views_in_a_browser(setup: Setup) -> None:
    """Log in, open each view as Airflow shows it, read what it says."""
    deployment, catalog, _, _ = setup
    story = STORY[UI_KIND]
    run1, run2 = story["run1"], story["run2"]
    with Browser(deployment.base_url, SCREENSHOTS) as browser:
        browser.login(ADMIN_USER, ADMIN_PASSWORD)

        with browser.view("/plugin/bfx-recovery", "recovery") as view:
            row = view.one(f"#dags tr[data-dag={DAG_ID}]")
            assert "S" in row.text and run2 in row.text
            view.shot("recovery-nav")

        with browser.view(f"/dags/{DAG_ID}/runs/{run2}/plugin/bfx-recovery-run", "run") as view:
            counts = _cards(view, "#batch-counts .card", "data-status")
            assert counts == {"C": 47, "S": 5}
            assert len(view.css("#tasks tr[data-status=C]")) == 47
            cells = view.css("svg.timeline rect.cell")
            grid = {
                (c.get_attribute("data-task"), c.get_attribute("data-attempt")): c.get_attribute(
                    "data-status"
                )
                for c in cells
            }
            assert grid[("load_table_48", "1")] == "F" and grid[("load_table_48", "2")] == "S"
            assert sum(1 for (_, a), s in grid.items() if a == "2" and s == "C") == 47
            view.shot("recovery-run")

        task_path = f"/dags/{DAG_ID}/runs/{run2}/tasks/load_table_48/plugin/bfx-recovery-task"
        with browser.view(task_path, "task") as view:
            rows = view.css("#executions tr[data-execution]")
            seen = [(r.get_attribute("data-attempt"), r.get_attribute("data-status")) for r in rows]
            assert seen == [("2", "S"), ("1", "F")]
            assert rows[0].get_attribute("data-this-run") == "1"
            view.shot("recovery-task")

        with browser.view(f"/dags/{DAG_ID}/plugin/bfx-recovery-dag", "dag") as view:
            assert "fresh lineage" in view.one("#plan-summary").text  # run 2 closed the lineage
            assert len(view.css("#batches tr[data-batch]")) == 2
            view.shot("recovery-dag")
    del catalog, run1


@ui
def test_reset_from_the_browser_starts_the_next_run_fresh(setup: Setup) -> None:
    """A failed chain: the read-only user cannot reset; the admin resets one task through the
    API and then the DAG in the browser, after a confirmation that says what will happen; the
    reset is in Airflow's audit log; the next run starts a fresh lineage and runs every task."""
    deployment, catalog, _, ledgers = setup
    api = deployment.api
    failed, failed_batch = _failed_chain(setup, {"fail": ["transform"]})
    plan = api.call("GET", f"{API}/dags/{CHAIN}/plan")
    assert {t["task_id"]: t["action"] for t in plan["tasks"]} == {
        "extract": "skip",
        "load": "run",
        "transform": "retry",
    }
    assert deployment.viewer.post(f"{API}/dags/{CHAIN}/reset").status_code == 403

    one = api.call("POST", f"{API}/dags/{CHAIN}/reset", json={"task_id": "extract"})
    assert one["changed_rows"] == 1 and "extract runs in full" in one["message"]
    plan = api.call("GET", f"{API}/dags/{CHAIN}/plan")
    assert {t["task_id"]: t["action"] for t in plan["tasks"]}["extract"] == "retry"

    with Browser(deployment.base_url, SCREENSHOTS) as browser:
        browser.login(ADMIN_USER, ADMIN_PASSWORD)
        with browser.view(f"/dags/{CHAIN}/plugin/bfx-recovery-dag", "dag") as view:
            view.one("button[data-reset=dag]").click()
            confirm = view.wait("the confirmation", lambda: view.css("#confirm.open"))[0]
            assert "starts a fresh lineage" in confirm.text and "runs all 3 task(s)" in confirm.text
            view.shot("recovery-reset-confirm")
            view.one("#confirm-yes").click()
            result = view.wait(
                "the reset's answer", lambda: view.one("#result").get_attribute("data-status")
            )
            assert result == "200", view.one("#result").text
            assert "fresh lineage" in view.one("#result").text

    audit = api.call("GET", "eventLogs", params={"event": "bfx.reset", "dag_id": CHAIN})
    entries = audit["event_logs"]
    assert [(e["owner"], e["task_id"]) for e in entries] == [("admin", "extract"), ("admin", None)]
    plan = api.call("GET", f"{API}/dags/{CHAIN}/plan")
    assert plan["resumes"] is False

    fresh = api.trigger(CHAIN)
    assert api.wait_run(CHAIN, fresh, timeout=180) == "success"
    assert ran(ledger(ledgers, CHAIN), fresh) == ["extract", "transform", "load"]
    states = api.task_states(CHAIN, fresh)
    assert Counter(states.values()) == Counter({"success": 3})
    batch = wait_batch_closed(catalog, deployment, CHAIN, fresh)
    assert batch.LineageID == batch.ExecutionID != failed_batch.LineageID
    assert batch.AttemptNumber == 1


@ui
def test_resume_in_place_reruns_only_the_failed_tasks(setup: Setup) -> None:
    """A chain fails at ``transform``. The read-only user may not resume; ``bfx resume
    --dry-run`` (the CLI, in the deployment's environment) says what would be cleared; the
    admin resumes the run in place from the browser (the view calls the API): Airflow clears
    ``transform`` and ``load`` in the same run, ``extract`` does not run again, the catalog
    reopens the run's batch (same execution, same lineage) and retries ``transform`` from its
    failed row; the resume is in Airflow's audit log, and a second resume is refused (the
    batch is no longer failed)."""
    deployment, catalog, _, ledgers = setup
    api = deployment.api
    failed, batch = _failed_chain(setup, {"fail_first_try": ["transform"]})
    assert (batch.ExecutionStatus, batch.NextLoadStatus) == ("F", "R")
    assert ran(ledger(ledgers, CHAIN), failed) == ["extract"]
    first_try = catalog.task_rows(deployment, CHAIN, failed)

    refused = deployment.viewer.post(f"{API}/dags/{CHAIN}/resume")
    assert refused.status_code == 403, refused.text
    dry = deployment.run_cli("bfx", "resume", CHAIN, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"run {failed} of {CHAIN}" in dry.stdout
    assert "would clear 2 failed task instance(s): load, transform" in dry.stdout
    # The dry run changed nothing.
    assert api.task_states(CHAIN, failed)[("transform", -1)] == "failed"
    older = api.post(f"{API}/dags/{CHAIN}/resume", {"run_id": "not-the-latest"})
    assert older.status_code == 409 and "not the latest batch" in older.text, older.text

    # The admin resumes from the DAG's recovery view, after a confirmation naming the run.
    with Browser(deployment.base_url, SCREENSHOTS) as browser:
        browser.login(ADMIN_USER, ADMIN_PASSWORD)
        with browser.view(f"/dags/{CHAIN}/plugin/bfx-recovery-dag", "dag") as view:
            view.one("button[data-resume=run]").click()
            confirm = view.wait("the confirmation", lambda: view.css("#resume-confirm.open"))[0]
            assert f"of run {failed}: load, transform" in confirm.text
            view.shot("recovery-resume-confirm")
            view.one("#resume-yes").click()
            status = view.wait(
                "the resume's answer",
                lambda: view.one("#resume-result").get_attribute("data-status"),
            )
            assert status == "200", view.one("#resume-result").text
            assert "cleared 2 failed task instance(s)" in view.one("#resume-result").text
    assert api.wait_run(CHAIN, failed, timeout=180) == "success"
    assert ran(ledger(ledgers, CHAIN), failed) == ["extract", "transform", "load"]
    assert Counter(api.task_states(CHAIN, failed).values()) == Counter({"success": 3})

    rows = catalog.rows(deployment, CHAIN, failed)
    per_task = Counter(r.TaskId for r in rows if r.TaskId is not None)
    assert per_task == Counter({"extract": 1, "transform": 2, "load": 1})  # extract: no new row
    again = catalog.task_rows(deployment, CHAIN, failed)
    assert again["extract"].ExecutionID == first_try["extract"].ExecutionID
    assert again["transform"].ExecutionStatus == "S"
    assert again["transform"].OriginalExecutionID == first_try["transform"].ExecutionID
    closed = wait_batch_closed(catalog, deployment, CHAIN, failed)
    assert (closed.ExecutionID, closed.LineageID) == (batch.ExecutionID, batch.LineageID)
    assert (closed.ExecutionStatus, closed.NextLoadStatus) == ("S", "P")

    audit = api.call("GET", "eventLogs", params={"event": "bfx.resume", "dag_id": CHAIN})
    assert [(e["owner"], e["run_id"]) for e in audit["event_logs"]] == [("admin", failed)]
    second = api.post(f"{API}/dags/{CHAIN}/resume")
    assert second.status_code == 409 and "not F" in second.text, second.text
