"""Routing scenarios a single process cannot show, in a real deployment.

* A mapped task over a list reordered between runs: items resume by identity, whichever map
  index they land on, and the DAG processor's new parse is what the scheduler expands. Each
  mapped instance that ran has its own "Recovery" link (decision 0112): its task process computed
  the URL of its map index, though Airflow's ``MappedOperator.unmap`` builds the operator it runs
  without the link the routing set on the mapped task (the gate carries it over).
* A nested batch through a DEFERRABLE ``TriggerDagRunOperator``: the trigger task waits for the
  child run in the triggerer and resumes in a worker; the resumed parent triggers a child run
  that resumes the failed child's lineage instead of rerunning it.
* A LocalExecutor worker killed with SIGKILL while it supervises a task: the other workers (and
  any replacement, forked from the scheduler when Airflow needs one) carry on, and no catalog
  connection is ever shared between processes (each
  catalog backend of ``pg_stat_activity`` belongs to exactly one process, never the scheduler's
  nor a worker's). The killed task is closed by Airflow's heartbeat timeout and retried by the
  next run.

The catalog connection comes from ``AIRFLOW_CONN_BFX_CATALOG_DEFAULT`` (PostgreSQL). The same
deployment also checks the harness itself first: an unrouted DAG runs end to end, anonymous
requests are refused, the viewer may read but not change a DAG run.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import psutil
import pytest
from sqlalchemy import create_engine, make_url, select, text
from sqlalchemy.pool import NullPool

from tests.deployment.catalogs import CatalogSetup, ledger, ran, wait_batch_closed
from tests.deployment.conftest import DEPLOY_DAGS, DeploymentFactory
from tests.deployment.harness import HEALTHY_COMPONENTS, Deployment

SMOKE = "bfx_deploy_smoke"
ITEMS = "bfx_deploy_items"
PARENT = "bfx_deploy_nested_parent"
CHILD = "bfx_deploy_nested_child"
CHAIN = "bfx_deploy_chain"
WORKER_TITLE = "airflow worker -- LocalExecutor"
_STATES_QUESTION = re.compile(
    r"method=GET path=/execution/task-instances/states query='(?P<query>[^']*)'"
    r" status_code=(?P<status>\d+)"
)


class Env:
    def __init__(self, deployment: Deployment, catalog: CatalogSetup, ledgers: Path) -> None:
        self.deployment, self.catalog, self.ledgers = deployment, catalog, ledgers
        self.api = deployment.api

    def run(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 180) -> str:
        run_id = self.api.trigger(dag_id, conf=conf)
        self.api.wait_run(dag_id, run_id, timeout=timeout)
        return run_id

    def healthy(self) -> None:
        health = self.api.health()
        assert all(health[c]["status"] == "healthy" for c in HEALTHY_COMPONENTS), health

    def mapped_rows(self, dag_id: str, run_id: str, task_id: str) -> dict[int, Any]:
        """The latest row of each map index of one mapped task of one run."""
        latest: dict[int, Any] = {}
        for row in self.catalog.rows(self.deployment, dag_id, run_id):
            if row.TaskId == task_id:
                latest[row.MapIndex] = row
        return latest

    def recovery_link(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
        """The URL of a task instance's "Recovery" link, as the API server reads it (the XCom
        its task process stored when the try ended); None when no try stored one."""
        links = self.api.call(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links",
            params={"map_index": map_index},
        )
        return links["extra_links"].get("Recovery", "<no Recovery link listed>")

    def recovery_url(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        """The URL ``RecoveryLink`` builds: ``[api] base_url``, then the task instance's
        Recovery tab (``.../mapped/<map_index>/plugin/...`` for a mapped instance)."""
        q = lambda v: quote(v, safe="")  # noqa: E731
        return (
            f"{self.deployment.base_url}/dags/{q(dag_id)}/runs/{q(run_id)}/tasks/{q(task_id)}"
            f"/mapped/{map_index}/plugin/bfx-recovery-task"
        )

    def dump(self, dag_id: str) -> str:
        """Every row of a DAG and its errors, for an assertion message."""
        store = self.catalog.store(self.deployment)
        lines = [
            f"{r.ExecutionID} {r.RunId} {r.TaskId} try={r.TryNumber} {r.ExecutionStatus}/"
            f"{r.NextLoadStatus} orig={r.OriginalExecutionID} parent={r.ParentExecutionID}"
            for r in store.executions(dag_id, None)
        ]
        with store.engine.connect() as conn:
            lines += [
                f"error {e.ExecutionID} {e.ErrorType}: {e.ErrorMessage}"
                for e in conn.execute(select(store.s.ExecutionError))
            ]
        return "\n".join(lines)

    def state_questions(
        self, dag_id: str, about_run: str
    ) -> list[tuple[int, dict[str, list[str]]]]:
        """Every ``get_task_states`` a task process asked the API server about ``about_run``
        (its access log): (HTTP status, the query's parameters)."""
        found = []
        for line in self.deployment.log_text("api-server").splitlines():
            m = _STATES_QUESTION.search(line)
            if m is None:
                continue
            query = parse_qs(m["query"])
            if query.get("dag_id") == [dag_id] and about_run in query.get("run_ids", []):
                found.append((int(m["status"]), query))
        return found

    def batch_rows(self, dag_id: str) -> list[Any]:
        """Every batch row of a DAG, oldest first."""
        rows = [r for r in self.catalog.rows(self.deployment, dag_id) if r.TaskId is None]
        return sorted(rows, key=lambda r: r.ExecutionID)


@pytest.fixture(scope="module")
def env(
    deployment_factory: DeploymentFactory,
    pg_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    catalog = CatalogSetup.create("env", pg_server_url)
    ledgers = tmp_path_factory.mktemp("ledgers")
    (ledgers / "items.json").write_text("[1, 2, 3, 4]")
    deployment = deployment_factory(
        dags=[
            DEPLOY_DAGS / "bfx_deploy_items.py",
            DEPLOY_DAGS / "bfx_deploy_nested.py",
            DEPLOY_DAGS / "bfx_deploy_chain.py",
            DEPLOY_DAGS / "bfx_deploy_smoke.py",
        ],
        env={
            **catalog.env(),
            "BFX_DEPLOY_LEDGER_DIR": str(ledgers),
            "BFX_DEPLOY_LEDGER": str(ledgers / "smoke.ledger"),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
        },
        parallelism=4,
    )
    catalog.after_start(deployment)
    for dag_id in (SMOKE, ITEMS, PARENT, CHILD, CHAIN):
        deployment.api.wait_dag_parsed(dag_id, timeout=90)
    try:
        yield Env(deployment, catalog, ledgers)
    finally:
        catalog.drop()


# -- the harness itself: a plain DAG, authentication --------------------------------------------


def test_healthy_with_every_component(env: Env) -> None:
    env.healthy()
    assert set(env.deployment.pids()) == set(Deployment.CORE_COMPONENTS)


def test_an_unrouted_dag_runs_to_success_and_writes_no_rows(env: Env) -> None:
    run_id = env.run(SMOKE, timeout=60)
    assert env.api.task_states(SMOKE, run_id) == {
        ("first", -1): "success",
        ("second", -1): "success",
    }
    written = (env.ledgers / "smoke.ledger").read_text(encoding="utf-8").splitlines()
    assert f"{SMOKE} {run_id} first" in written
    assert f"{SMOKE} {run_id} second" in written
    assert env.catalog.rows(env.deployment, SMOKE) == []


def test_anonymous_is_refused(env: Env) -> None:
    assert env.deployment.anonymous().get("dags").status_code in (401, 403)


def test_viewer_reads_but_cannot_change_a_run(env: Env) -> None:
    run_id = env.api.trigger(SMOKE)
    viewer = env.deployment.viewer
    assert viewer.get("dags").status_code == 200
    assert viewer.get(f"dags/{SMOKE}/dagRuns/{run_id}").status_code == 200
    refused = viewer.patch(f"dags/{SMOKE}/dagRuns/{run_id}", {"state": "failed"})
    assert refused.status_code == 403, refused.text
    assert env.api.wait_run(SMOKE, run_id, timeout=60) == "success"


# -- routing scenarios ---------------------------------------------------------------------


def _wait_parsed_after(env: Env, dag_id: str, moment: dt.datetime, parses: int = 2) -> None:
    """Wait until the DAG processor has parsed the DAG's file ``parses`` more times since
    ``moment``: the second parse after a change started after the change was written."""
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while len(seen) < parses:
        stamp = env.api.dag(dag_id).get("last_parsed_time")
        if stamp and dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) > moment:
            seen.add(stamp)
        assert time.monotonic() < deadline, f"{dag_id} not parsed again since {moment}"
        time.sleep(1)


def test_mapped_items_reordered_between_runs_resume_by_identity(env: Env) -> None:
    run1 = env.run(ITEMS, conf={"fail_items": [3]})
    states1 = env.api.task_states(ITEMS, run1)
    assert [states1[("process", i)] for i in range(4)] == [
        "success",
        "success",
        "failed",
        "success",
    ]
    assert states1[("summary", -1)] == "upstream_failed"
    # Every mapped instance ran a try, the failed one included: each has the Recovery link of
    # its own map index (before the gate carried the link over, the API server answered
    # {"Recovery": None} for each: no task process had stored it).
    links1 = {i: env.recovery_link(ITEMS, run1, "process", i) for i in range(4)}
    assert links1 == {i: env.recovery_url(ITEMS, run1, "process", i) for i in range(4)}
    rows1 = env.mapped_rows(ITEMS, run1, "process")
    assert (rows1[2].ExecutionStatus, rows1[2].NextLoadStatus) == ("F", "R")
    wait_batch_closed(env.catalog, env.deployment, ITEMS, run1)

    # The list is reordered: index 0 is now item 4, index 1 item 3 (the failed one), ...
    moment = dt.datetime.now(dt.timezone.utc)
    (env.ledgers / "items.json").write_text("[4, 3, 2, 1]")
    _wait_parsed_after(env, ITEMS, moment)

    run2 = env.run(ITEMS)
    states2 = env.api.task_states(ITEMS, run2)
    assert [states2[("process", i)] for i in range(4)] == [
        "skipped",  # item 4: done in run 1 at index 3
        "success",  # item 3: failed in run 1 at index 2, runs again
        "skipped",  # item 2: done in run 1 at index 1
        "skipped",  # item 1: done in run 1 at index 0
    ]
    assert states2[("summary", -1)] == "success"
    # Each instance had a try, the skipped ones too (their own gates skipped them: a mapped
    # instance is never skipped ahead, decision 0106), so each has the run 2 URL of its index.
    links2 = {i: env.recovery_link(ITEMS, run2, "process", i) for i in range(4)}
    assert links2 == {i: env.recovery_url(ITEMS, run2, "process", i) for i in range(4)}
    assert ran(ledger(env.ledgers, ITEMS), run2) == ["item:3", "summary:[10, 20, 30, 40]"]
    assert Counter(ran(ledger(env.ledgers, ITEMS), run1)) == Counter(["item:1", "item:2", "item:4"])
    rows2 = env.mapped_rows(ITEMS, run2, "process")
    assert rows2[0].OriginalExecutionID == rows1[3].OriginalExecutionID
    assert rows2[1].OriginalExecutionID == rows1[2].OriginalExecutionID
    assert rows2[2].OriginalExecutionID == rows1[1].OriginalExecutionID
    assert rows2[3].OriginalExecutionID == rows1[0].OriginalExecutionID
    assert [rows2[i].ExecutionStatus for i in range(4)] == ["C", "S", "C", "C"]
    assert rows2[1].AttemptNumber == 2
    batch2 = wait_batch_closed(env.catalog, env.deployment, ITEMS, run2)
    assert (batch2.ExecutionStatus, batch2.NextLoadStatus) == ("S", "P")
    # Airflow's outcome of run 1 is evidence (DESIGN.md §4): each item start of run 2 asked the
    # API server once about run 1, every answer read. A start that found run 2's batch already
    # created asked only about its own identity's instance in run 1 (map_index: where that
    # identity sat), not every item's (issue 12, goal 2; which starts find it depends on their
    # timing). `summary` has no row in run 1: its start asked nothing about run 1.
    asked = env.state_questions(ITEMS, run1)
    assert [status for status, _ in asked] == [200] * 4, asked
    assert all(query["task_ids"] == ["process"] for _, query in asked), asked
    narrow = [query["map_index"] for _, query in asked if "map_index" in query]
    assert all(index in (["0"], ["1"], ["2"], ["3"]) for index in narrow), asked
    env.healthy()


def test_nested_batch_through_a_deferrable_trigger_resumes_the_child(env: Env) -> None:
    (env.ledgers / "child_broken").write_text("broken")
    parent1 = env.run(PARENT, timeout=240)
    assert env.api.task_states(PARENT, parent1) == {
        ("trigger_child", -1): "failed",
        ("report", -1): "upstream_failed",
    }
    (child_batch1,) = env.batch_rows(CHILD)
    child1 = child_batch1.RunId
    assert env.api.task_states(CHILD, child1) == {
        ("first", -1): "success",
        ("second", -1): "failed",
        ("third", -1): "upstream_failed",
    }
    trigger1 = env.catalog.task_rows(env.deployment, PARENT, parent1)["trigger_child"]
    assert child_batch1.ParentExecutionID == trigger1.ExecutionID
    assert (trigger1.ExecutionStatus, trigger1.NextLoadStatus) == ("F", "R"), env.dump(PARENT)
    wait_batch_closed(env.catalog, env.deployment, CHILD, child1)
    wait_batch_closed(env.catalog, env.deployment, PARENT, parent1)

    (env.ledgers / "child_broken").unlink()
    parent2 = env.run(PARENT, timeout=240)
    assert env.api.task_states(PARENT, parent2) == {
        ("trigger_child", -1): "success",
        ("report", -1): "success",
    }
    child_batch1_again, child_batch2 = env.batch_rows(CHILD)
    assert child_batch1_again.ExecutionID == child_batch1.ExecutionID
    child2 = child_batch2.RunId
    assert env.api.task_states(CHILD, child2) == {
        ("first", -1): "skipped",
        ("second", -1): "success",
        ("third", -1): "success",
    }
    # What really ran: the child's first task once in all, the parent's report once.
    assert ran(ledger(env.ledgers, CHILD), child1) == ["first"]
    assert ran(ledger(env.ledgers, CHILD), child2) == ["second", "third"]
    assert ran(ledger(env.ledgers, PARENT), parent2) == ["report"]
    trigger2 = env.catalog.task_rows(env.deployment, PARENT, parent2)["trigger_child"]
    assert trigger2.OriginalExecutionID == trigger1.OriginalExecutionID
    assert child_batch2.ParentExecutionID == trigger2.ExecutionID
    assert child_batch2.OriginalExecutionID == child_batch1.ExecutionID  # the child resumed
    assert child_batch2.AttemptNumber == 2
    closed = wait_batch_closed(env.catalog, env.deployment, CHILD, child2)
    assert (closed.ExecutionStatus, closed.NextLoadStatus) == ("S", "P")
    parent_batch2 = wait_batch_closed(env.catalog, env.deployment, PARENT, parent2)
    assert (parent_batch2.ExecutionStatus, parent_batch2.NextLoadStatus) == ("S", "P")
    env.healthy()


# -- a LocalExecutor worker killed ----------------------------------------------------------


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return WORKER_TITLE in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _worker_pids(deployment: Deployment) -> set[int]:
    found = set()
    for pid in deployment.component_pids("scheduler"):
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        if _is_worker(proc):
            found.add(pid)
    return found


class SocketWatch:
    """Samples which OS processes hold each client socket of the catalog database.

    ``pg_stat_activity`` names the client port of every backend of the catalog database; the
    kernel's socket table (``psutil.net_connections``, as root) names every process holding
    that socket. A connection inherited across ``fork`` shows up in two processes.
    """

    def __init__(self, env: Env) -> None:
        assert env.catalog.database is not None
        self.database = env.catalog.database
        self.engine = create_engine(env.catalog.pg_server_url, poolclass=NullPool)
        self.pg_port = make_url(env.catalog.pg_server_url).port or 5432
        self.owners: dict[int, set[int]] = {}  # client port -> pids that held it
        self.samples_with_connections = 0

    def sample(self) -> None:
        with self.engine.connect() as conn:
            ports = set(
                conn.execute(
                    text(
                        "SELECT client_port FROM pg_stat_activity"
                        " WHERE datname = :d AND client_port IS NOT NULL"
                    ),
                    {"d": self.database},
                ).scalars()
            )
        if not ports:
            return
        held: dict[int, set[int]] = {}
        for sock in psutil.net_connections(kind="tcp"):
            if (
                sock.pid
                and sock.laddr
                and sock.raddr
                and sock.raddr.port == self.pg_port
                and sock.laddr.port in ports
            ):
                held.setdefault(sock.laddr.port, set()).add(sock.pid)
        if held:
            self.samples_with_connections += 1
        for port, pids in held.items():
            self.owners.setdefault(port, set()).update(pids)

    def close(self) -> None:
        self.engine.dispose()


def test_killed_local_executor_worker_is_replaced_without_sharing_a_catalog_session(
    env: Env,
) -> None:
    deployment = env.deployment
    scheduler_pid = deployment.pids()["scheduler"]
    run0 = env.run(CHAIN)  # a closed lineage to start from
    wait_batch_closed(env.catalog, deployment, CHAIN, run0)

    run1 = env.api.trigger(CHAIN, conf={"sleep": {"transform": 300}})
    pid_file = env.ledgers / "transform.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert time.monotonic() < deadline, "transform never started"
        time.sleep(0.5)
    task_pid = int(pid_file.read_text())
    pid_file.unlink()
    worker = psutil.Process(task_pid).parent()
    assert worker is not None and _is_worker(worker), worker
    workers_before = _worker_pids(deployment)
    assert worker.pid in workers_before
    os.kill(worker.pid, signal.SIGKILL)  # the supervisor of transform, a LocalExecutor worker
    os.kill(task_pid, signal.SIGKILL)  # and the task it supervised, as an OOM kill would
    assert env.api.wait_run(CHAIN, run1, timeout=180) == "failed"  # heartbeat timeout
    assert env.api.task_states(CHAIN, run1)[("transform", -1)] == "failed"
    wait_batch_closed(env.catalog, deployment, CHAIN, run1)
    killed = env.catalog.task_rows(deployment, CHAIN, run1)["transform"]
    assert (killed.ExecutionStatus, killed.NextLoadStatus) == ("F", "R")

    watch = SocketWatch(env)
    try:
        run2 = env.api.trigger(CHAIN, conf={"sleep": {"transform": 4, "load": 4}})
        deadline = time.monotonic() + 180
        while env.api.run(CHAIN, run2).get("state") not in ("success", "failed"):
            assert time.monotonic() < deadline, env.api.task_states(CHAIN, run2)
            watch.sample()
            time.sleep(0.3)
        watch.sample()
    finally:
        watch.close()
    assert env.api.task_states(CHAIN, run2) == {
        ("extract", -1): "skipped",
        ("transform", -1): "success",
        ("load", -1): "success",
    }
    assert ran(ledger(env.ledgers, CHAIN), run2) == ["transform", "load"]
    rows2 = env.catalog.task_rows(deployment, CHAIN, run2)
    assert rows2["transform"].OriginalExecutionID == killed.OriginalExecutionID

    # The killed worker is gone and the scheduler is the same. Airflow forks a replacement only
    # when a queued task finds the queue unread at its next check (LocalExecutor._check_workers):
    # with three idle workers left it may not, so a new worker is not required here; any that
    # appeared is a child of the scheduler (_worker_pids), and the check below covers it...
    workers_after = _worker_pids(deployment)
    assert worker.pid not in workers_after
    assert deployment.pids()["scheduler"] == scheduler_pid
    # ...and every catalog connection seen while run 2 ran belonged to one process only, never
    # to the scheduler or a LocalExecutor worker (the processes a fork would copy it from).
    assert watch.samples_with_connections > 0, "no catalog connection seen while run 2 ran"
    shared = {port: pids for port, pids in watch.owners.items() if len(pids) > 1}
    assert shared == {}, f"catalog sockets held by several processes: {shared}"
    forbidden = {scheduler_pid} | workers_before | workers_after
    holders = set().union(*watch.owners.values())
    assert not holders & forbidden, (holders, forbidden)
    env.healthy()
