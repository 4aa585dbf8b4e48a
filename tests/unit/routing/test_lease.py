"""The lease keeper: one daemon thread per process renews every running execution's lease
(DESIGN.md §5, decision 0109)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.routing.lease import LeaseKeeper

REPO = Path(__file__).resolve().parents[3]
OWNER = "worker-1:4242"


@pytest.fixture
def store(catalog_url: str) -> Any:
    engine = create_catalog_engine(catalog_url)
    upgrade(engine)
    yield CatalogStore(engine)
    engine.dispose()


def start(store: CatalogStore, seconds: float) -> int:
    spec = TaskSpec(
        BatchSpec("lease_dag", "run-1"), "long", lease_owner=OWNER, lease_seconds=seconds
    )
    return store.start_task(spec).execution_id


def row(store: CatalogStore, execution_id: int) -> Any:
    (found,) = [r for r in store.executions("lease_dag", "run-1") if r.ExecutionID == execution_id]
    return found


def wait_until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_renewed_lease_outlives_its_duration(store: CatalogStore) -> None:
    execution_id = start(store, 1.0)
    first = row(store, execution_id).LeaseExpiresAt
    keeper = LeaseKeeper(store, execution_id, OWNER, 1.0).start()
    try:
        time.sleep(2.5)  # 2.5 lease durations; renewed every second
        assert store.expire_leases() == []
        now = row(store, execution_id)
        assert now.ExecutionStatus == "E"
        assert now.LeaseExpiresAt > first + timedelta(seconds=1)
    finally:
        keeper.stop()
    assert wait_until(lambda: not keeper.renewing, 3.0)


def test_without_renewal_the_lease_lapses_and_the_scan_aborts_it(store: CatalogStore) -> None:
    execution_id = start(store, 1.0)
    time.sleep(1.3)
    (expired,) = store.expire_leases()
    assert expired.execution_id == execution_id
    assert (row(store, execution_id).ExecutionStatus, row(store, execution_id).NextLoadStatus) == (
        "A",
        "R",
    )


def test_a_keeper_whose_row_was_aborted_says_so_and_stops(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    execution_id = start(store, 1.0)
    caplog.set_level(logging.WARNING, logger="airflow_provider_bfx")
    # Someone else's expiry scan, with a clock past the lease: the row is aborted under us.
    later = CatalogStore(store.engine, clock=lambda: store.clock() + timedelta(minutes=5))
    assert [e.execution_id for e in later.expire_leases()] == [execution_id]
    keeper = LeaseKeeper(store, execution_id, OWNER, 1.0).start()
    try:
        assert wait_until(lambda: not keeper.renewing, 5.0), "keeper still renewing"
    finally:
        keeper.stop()
    (line,) = [r.getMessage() for r in caplog.records if "no longer active" in r.getMessage()]
    assert f"execution {execution_id} is no longer active under owner {OWNER}" in line
    assert row(store, execution_id).ExecutionStatus == "A"  # not revived by a renewal


def test_the_keeper_never_keeps_a_finished_process_alive(sqlite_url: str, tmp_path: Path) -> None:
    engine = create_catalog_engine(sqlite_url)
    upgrade(engine)
    engine.dispose()
    script = (
        "import sys\n"
        "from airflow_provider_bfx.catalog.engine import create_catalog_engine\n"
        "from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec\n"
        "from airflow_provider_bfx.routing.lease import LeaseKeeper\n"
        "store = CatalogStore(create_catalog_engine(sys.argv[1]))\n"
        "spec = TaskSpec(BatchSpec('d', 'r'), 't', lease_owner='p:1', lease_seconds=60)\n"
        "LeaseKeeper(store, store.start_task(spec).execution_id, 'p:1', 60).start()\n"
        "print('started', flush=True)\n"  # main ends here without stopping the keeper
    )
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script, sqlite_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout
    assert time.monotonic() - t0 < 20  # far less than the 20 s renewal interval


def start_task(store: CatalogStore, task_id: str, seconds: float) -> int:
    spec = TaskSpec(
        BatchSpec("lease_dag", "run-1"), task_id, lease_owner=OWNER, lease_seconds=seconds
    )
    return store.start_task(spec).execution_id


def renewal_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("bfx-lease")]


def test_the_tries_of_one_process_share_one_renewal_thread(store: CatalogStore) -> None:
    """``dags test`` runs every try in one process: one thread renews all their leases, and a
    keeper's start and stop neither start nor join a thread of its own (decision 0109)."""
    ids = [start_task(store, f"t{i}", 1.0) for i in range(3)]
    first = {eid: row(store, eid).LeaseExpiresAt for eid in ids}
    keepers = [LeaseKeeper(store, eid, OWNER, 1.0).start() for eid in ids]
    try:
        assert renewal_threads() == ["bfx-lease-renewer"]
        assert all(k.running for k in keepers)
        keepers[0].stop()  # one try ends; the others go on being renewed
        time.sleep(2.5)  # 2.5 lease durations
        assert [e.execution_id for e in store.expire_leases()] == [ids[0]]
        for eid in ids[1:]:
            assert row(store, eid).LeaseExpiresAt > first[eid] + timedelta(seconds=1)
        assert renewal_threads() == ["bfx-lease-renewer"]
    finally:
        for keeper in keepers:
            keeper.stop()
    assert not any(k.renewing or k.running for k in keepers)


def test_a_forked_child_renews_its_own_leases(store: CatalogStore, catalog_url: str) -> None:
    """The parent's renewal thread does not exist in a forked child (a LocalExecutor worker or
    a task process forked after a keeper ran): the child's first keeper starts its own."""
    parent = LeaseKeeper(store, start_task(store, "parent", 60), OWNER, 60).start()
    child_id = start_task(store, "child", 1.0)
    first = row(store, child_id).LeaseExpiresAt
    try:
        pid = os.fork()
        if pid == 0:  # the child: its own engine, one keeper, 2.5 lease durations
            code = 1
            try:
                engine = create_catalog_engine(catalog_url)
                keeper = LeaseKeeper(CatalogStore(engine), child_id, OWNER, 1.0).start()
                time.sleep(2.5)
                code = 0 if keeper.running and renewal_threads() == ["bfx-lease-renewer"] else 2
                keeper.stop()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert row(store, child_id).LeaseExpiresAt > first + timedelta(seconds=1)
        assert parent.running
    finally:
        parent.stop()
