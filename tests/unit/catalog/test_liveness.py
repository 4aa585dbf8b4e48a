"""Dead lease owners (DESIGN.md §5; decision 0094): a ``host:pid`` of this host whose process is
gone holds no live lease. Real processes (started and killed here, by their own pid) and real
catalogs (SQLite file, PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.liveness import owner_known_dead, this_host
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.routing import lease as lease_module
from airflow_provider_bfx.routing.lease import LeaseKeeper
from tests.story import FakeClock, deployed_store, task_rows


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def dead_owner() -> str:
    """``host:pid`` of a process that ran here and was killed and reaped."""
    proc = _sleeper()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return f"{this_host()}:{proc.pid}"


def test_a_killed_and_reaped_process_is_dead(dead_owner: str) -> None:
    assert owner_known_dead(dead_owner)


def test_a_zombie_is_dead() -> None:
    proc = _sleeper()
    try:
        proc.send_signal(signal.SIGKILL)
        # Not reaped yet: the pid exists as a zombie until wait() below.
        deadline = 100
        while deadline and not owner_known_dead(f"{this_host()}:{proc.pid}"):
            deadline -= 1
            subprocess.run(["sleep", "0.05"], check=True)
        assert owner_known_dead(f"{this_host()}:{proc.pid}")
    finally:
        proc.wait(timeout=30)


def test_running_processes_and_other_hosts_count_as_alive() -> None:
    proc = _sleeper()
    try:
        assert not owner_known_dead(f"{this_host()}:{proc.pid}")
        assert not owner_known_dead(f"{this_host()}:{os.getpid()}")
        assert not owner_known_dead(f"another-host-{this_host()}:{proc.pid}")
        assert not owner_known_dead(None) and not owner_known_dead("me")
        assert not owner_known_dead(f"{this_host()}:not-a-pid")
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_dead_owner_does_not_refuse_the_next_try(store: CatalogStore, dead_owner: str) -> None:
    batch = BatchSpec("dag", "r1")
    crashed = store.start_task(TaskSpec(batch, "load", lease_owner=dead_owner, lease_seconds=600))
    assert crashed.run is Run.RUN
    again = store.start_task(TaskSpec(batch, "load", try_number=2, lease_seconds=600))
    assert again.run is Run.RUN  # not BFX_ALREADY_RUNNING
    rows = {r.ExecutionID: r for r in store.executions("dag", "r1")}
    assert rows[crashed.execution_id].ExecutionStatus == ExecutionStatus.ABORTED.value


def test_a_live_owner_still_refuses(store: CatalogStore) -> None:
    proc = _sleeper()
    try:
        batch = BatchSpec("dag", "r1")
        owner = f"{this_host()}:{proc.pid}"
        store.start_task(TaskSpec(batch, "load", lease_owner=owner, lease_seconds=600))
        again = store.start_task(TaskSpec(batch, "load", try_number=2))
        assert again.run is Run.REFUSE
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_crashed_batch_with_an_unexpired_lease_is_resumed(
    store: CatalogStore, dead_owner: str
) -> None:
    r1 = BatchSpec("dag", "r1")
    extract = store.start_task(TaskSpec(r1, "extract"))
    store.end_task(extract.execution_id, TaskOutcome.SUCCESS)
    store.start_task(TaskSpec(r1, "load", lease_owner=dead_owner, lease_seconds=600))
    # r1 crashed here: batch open, load E with a lease 10 minutes from lapsing.
    skipped = store.start_task(TaskSpec(BatchSpec("dag", "r2"), "extract"))
    assert skipped.run is Run.SKIP  # resumed: not a fresh lineage beside an "overlapping" run
    load = store.start_task(TaskSpec(BatchSpec("dag", "r2"), "load"))
    assert load.status is ExecutionStatus.RETRYING
    assert task_rows(store, "dag", "r1")["load"].ExecutionStatus == "A"


# -- a try parked by Airflow (deferred, rescheduled, awaiting input): decision 0082 ----------


def test_a_parked_try_outlives_its_dead_process_and_any_clock(
    catalog_url: str, dead_owner: str
) -> None:
    clock = FakeClock()
    store = deployed_store(catalog_url, clock)
    try:
        r1 = BatchSpec("dag", "r1")
        deferred = store.start_task(TaskSpec(r1, "wait", lease_owner=dead_owner, lease_seconds=60))
        # Its process deferred the try and handed the lease to Airflow as it exited.
        assert store.park(deferred.execution_id, dead_owner, "deferred")
        parked = task_rows(store, "dag", "r1")["wait"]
        assert (parked.LeaseOwner, parked.LeaseExpiresAt) == ("airflow:deferred", None)
        clock.advance(7 * 24 * 3600)  # a week in the triggerer
        assert store.expire_leases() == []  # and a batch start's scan (same function)
        store.start_task(TaskSpec(BatchSpec("other_dag", "x1"), "t"))  # batch start + scan
        assert task_rows(store, "dag", "r1")["wait"].ExecutionStatus == "E"
        # Another run of the DAG: the try is in progress, so the package is running.
        other = store.start_task(TaskSpec(BatchSpec("dag", "r2"), "wait"))
        assert other.run is Run.REFUSE
        # The same try resumed in a worker takes the lease back, for its own process.
        resumed = store.start_task(
            TaskSpec(r1, "wait", lease_owner=f"{this_host()}:{os.getpid()}", lease_seconds=60)
        )
        assert (resumed.run, resumed.execution_id) == (Run.RUN, deferred.execution_id)
        row = task_rows(store, "dag", "r1")["wait"]
        assert row.LeaseOwner == f"{this_host()}:{os.getpid()}"
        assert row.LeaseExpiresAt == clock.now + timedelta(seconds=60)
        store.end_task(deferred.execution_id, TaskOutcome.SUCCESS)
        assert task_rows(store, "dag", "r1")["wait"].ExecutionStatus == "S"
    finally:
        store.engine.dispose()


def test_an_ended_parked_try_holds_nothing_at_the_next_batch_start(
    store: CatalogStore,
) -> None:
    """A try that was parked and then ended keeps ``LeaseOwner = 'airflow:<state>'``: only an
    *active* row's lease counts, so the crashed run it belonged to is reconciled and resumed
    (not taken for an overlapping run)."""
    r1 = BatchSpec("dag", "r1")
    wait = store.start_task(TaskSpec(r1, "wait", lease_owner="h:1", lease_seconds=60))
    assert store.park(wait.execution_id, "h:1", "deferred")
    store.end_task(wait.execution_id, TaskOutcome.FAILED_TRY)
    assert task_rows(store, "dag", "r1")["wait"].LeaseOwner == "airflow:deferred"
    # r1 never ended: its batch is still open.
    again = store.start_task(TaskSpec(BatchSpec("dag", "r2"), "wait"))
    assert again.status is ExecutionStatus.RETRYING
    assert again.lineage_id == wait.lineage_id  # resumed, not a fresh lineage
    batches = [r for r in store.executions("dag") if r.TaskId is None]
    assert [(b.ExecutionStatus, b.NextLoadStatus) for b in batches] == [("F", "R"), ("R", "C")]


def test_park_changes_only_a_row_still_held_by_that_owner(store: CatalogStore) -> None:
    batch = BatchSpec("dag", "r1")
    started = store.start_task(TaskSpec(batch, "wait", lease_owner="h:1", lease_seconds=60))
    assert not store.park(started.execution_id, "h:2", "deferred")  # taken over meanwhile
    store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    assert not store.park(started.execution_id, "h:1", "deferred")  # already ended
    assert task_rows(store, "dag", "r1")["wait"].LeaseOwner == "h:1"


@pytest.mark.parametrize(
    ("airflow_state", "parked"),
    [("deferred", True), ("up_for_reschedule", True), ("failed", False), (None, False)],
)
def test_the_keeper_hands_over_at_exit_only_a_parked_try(
    store: CatalogStore, airflow_state: str | None, parked: bool
) -> None:
    owner = f"{this_host()}:{os.getpid()}"
    started = store.start_task(
        TaskSpec(BatchSpec("dag", "r1"), "wait", lease_owner=owner, lease_seconds=60)
    )
    keeper = LeaseKeeper(
        store, started.execution_id, owner, 60, airflow_state=lambda: airflow_state
    ).start()
    assert keeper.hand_over() is parked
    assert not keeper.running
    row = task_rows(store, "dag", "r1")["wait"]
    assert row.LeaseOwner == (f"airflow:{airflow_state}" if parked else owner)


def test_an_exiting_task_process_hands_a_deferred_try_to_airflow(catalog_url: str) -> None:
    """The atexit hook in a real process that ends while its try is deferred."""
    store = deployed_store(catalog_url)
    try:
        started = store.start_task(TaskSpec(BatchSpec("dag", "r1"), "wait", lease_owner="x:1"))
        script = (
            "import logging, sys\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from airflow_provider_bfx.catalog.liveness import owner_of_this_process\n"
            "from airflow_provider_bfx.routing.lease import LeaseKeeper\n"
            "from tests.story import deployed_store\n"
            "store = deployed_store(sys.argv[1])\n"
            "eid = int(sys.argv[2])\n"
            "from airflow_provider_bfx.catalog.store import BatchSpec, TaskSpec\n"
            "again = store.start_task(TaskSpec(BatchSpec('dag', 'r1'), 'wait',"
            " lease_owner=owner_of_this_process()))\n"
            "assert again.execution_id == eid\n"
            "LeaseKeeper(store, eid, owner_of_this_process(), 60,"
            " airflow_state=lambda: 'deferred').start()\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, catalog_url, str(started.execution_id)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(Path(__file__).resolve().parents[3]),
        )
        assert done.returncode == 0, done.stderr
        assert "[bfx] try parked by Airflow" in done.stderr + done.stdout
        row = task_rows(store, "dag", "r1")["wait"]
        assert (row.ExecutionStatus, row.LeaseOwner) == ("E", "airflow:deferred")
    finally:
        store.engine.dispose()


def test_a_forked_child_does_not_hand_over_its_parents_keepers(store: CatalogStore) -> None:
    owner = f"{this_host()}:{os.getpid()}"
    started = store.start_task(
        TaskSpec(BatchSpec("dag", "r1"), "wait", lease_owner=owner, lease_seconds=60)
    )
    keeper = LeaseKeeper(
        store, started.execution_id, owner, 60, airflow_state=lambda: "deferred"
    ).start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: exits through the atexit hooks of a normal exit
            code = 0 if not lease_module._running else 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert keeper.running  # the parent's keeper is untouched
        assert task_rows(store, "dag", "r1")["wait"].LeaseOwner == owner
    finally:
        keeper.stop()


def test_plan_and_reset_judge_leases_as_the_task_start_does(
    store: CatalogStore, dead_owner: str
) -> None:
    """One liveness rule: a parked try is running for ``bfx plan`` and ``bfx reset`` too, and a
    dead owner's unexpired lease holds nothing."""
    from airflow_provider_bfx.catalog import operations

    r1 = BatchSpec("dag", "r1")
    parked = store.start_task(TaskSpec(r1, "wait", lease_owner="h:1", lease_seconds=60))
    assert store.park(parked.execution_id, "h:1", "deferred")
    store.start_task(TaskSpec(r1, "load", lease_owner=dead_owner, lease_seconds=600))
    plan = {t.task_id: t for t in operations.plan(store, "dag").tasks}
    assert plan["wait"].run is Run.REFUSE, plan["wait"]
    assert plan["load"].run is not Run.REFUSE, plan["load"]
    with pytest.raises(RuntimeError, match="1 live task"):
        operations.reset(store, "dag")
