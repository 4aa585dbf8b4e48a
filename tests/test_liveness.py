"""Dead lease owners (DESIGN.md §5; decision 0094): a ``host:pid`` of this host whose process is
gone holds no live lease. Real processes (started and killed here, by their own pid) and real
catalogs (SQLite file, PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.liveness import owner_known_dead, this_host
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec

from .story import FakeClock, deployed_store, task_rows


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


@pytest.fixture
def store(catalog_url: str) -> Iterator[CatalogStore]:
    store = deployed_store(catalog_url, FakeClock())
    try:
        yield store
    finally:
        store.engine.dispose()


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
