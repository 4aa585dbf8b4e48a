"""Small defects of issue 9, item 8, each pinned by a test that failed before its fix.

* The six trampolines of decision 0041 must never change their source text.
* Stopping the lease keeper waits for a renewal in flight, so no renewal lands after ``stop()``
  returns (one that did would find the ended row and warn, falsely, of an abort by a reset).

(The callback that looks its row up in another process reads the code through
``parse_status``: ``tests/e2e/test_callback_lookup.py``, which needs a real Airflow run.)
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, text

from airflow_provider_bfx import callbacks
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.routing.lease import LeaseKeeper

# -- decision 0041: the trampolines' source text ---------------------------------------------

_TRAMPOLINES = {
    "bfx_pre_execute": (
        "def bfx_pre_execute(context: Any) -> None:\n"
        "    from airflow_provider_bfx.routing.gate import gate\n"
        "\n"
        "    gate(context)\n"
    ),
    "bfx_post_execute": (
        "def bfx_post_execute(context: Any, result: Any = None) -> None:\n"
        "    from airflow_provider_bfx.routing.ending import record_output\n"
        "\n"
        "    record_output(context, result)\n"
    ),
    "bfx_on_success": (
        "def bfx_on_success(context: Any) -> None:\n"
        "    from airflow_provider_bfx.routing.ending import on_success\n"
        "\n"
        "    on_success(context)\n"
    ),
    "bfx_on_failure": (
        "def bfx_on_failure(context: Any) -> None:\n"
        "    from airflow_provider_bfx.routing.ending import on_failure\n"
        "\n"
        "    on_failure(context)\n"
    ),
    "bfx_on_retry": (
        "def bfx_on_retry(context: Any) -> None:\n"
        "    from airflow_provider_bfx.routing.ending import on_retry\n"
        "\n"
        "    on_retry(context)\n"
    ),
    "bfx_on_skipped": (
        "def bfx_on_skipped(context: Any) -> None:\n"
        "    from airflow_provider_bfx.routing.ending import on_skipped\n"
        "\n"
        "    on_skipped(context)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(_TRAMPOLINES))
def test_the_trampolines_of_decision_0041_keep_their_source_text(name: str) -> None:
    """Pinned per function (``inspect.getsource``), not as the whole file: Airflow serializes a
    mapped task's ``pre_execute``/``post_execute`` as exactly this function source, and 0041
    promises the six bodies, while ``callbacks.py`` has since grown (the DAG-level callbacks,
    whose source Airflow never serializes), and its docstring and comments may change freely.
    All six are pinned because 0041 names all six and a DAG author may wire any of them by hand
    into a mapped task's ``partial`` arguments."""
    source = inspect.getsource(getattr(callbacks, name))
    assert source == _TRAMPOLINES[name], (
        f"airflow_provider_bfx.callbacks.{name} changed. Decision 0041: Airflow serializes a"
        " mapped task's pre_execute/post_execute as their SOURCE TEXT, so any edit here gives"
        " every routed DAG a new serialized hash, i.e. a new DAG version after a provider"
        " upgrade. Revert the edit and change the code it calls in airflow_provider_bfx.routing"
        " instead; only a new decision superseding 0041 may change this text (and this test)."
    )


def test_routing_installs_exactly_the_trampolines_of_decision_0041() -> None:
    assert [(attr, fn.__name__) for attr, fn in callbacks.TASK_CALLBACKS] == [
        ("on_success_callback", "bfx_on_success"),
        ("on_failure_callback", "bfx_on_failure"),
        ("on_retry_callback", "bfx_on_retry"),
        ("on_skipped_callback", "bfx_on_skipped"),
    ]


# -- the lease keeper: stop() leaves no renewal behind ---------------------------------------

OWNER = "worker-1:4242"


@pytest.fixture
def store(catalog_url: str) -> Any:
    engine = create_catalog_engine(catalog_url)
    upgrade(engine)
    yield CatalogStore(engine)
    engine.dispose()


def lease_expires_at(store: CatalogStore, execution_id: int) -> Any:
    E = store.s.Execution
    with store.engine.connect() as conn:
        return conn.execute(
            select(E.c.LeaseExpiresAt).where(E.c.ExecutionID == execution_id)
        ).scalar_one()


def wait_until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class RowLock:
    """A real lock on the execution row, held by another connection (another worker, a DBA):
    SQLite's write lock (``BEGIN IMMEDIATE``), PostgreSQL's ``SELECT ... FOR UPDATE``. A lease
    renewal started while it is held waits for it, so the renewal is provably in flight."""

    def __init__(self, store: CatalogStore, execution_id: int) -> None:
        self.engine = create_catalog_engine(store.engine.url)
        self.conn = self.engine.connect()
        self.trans = self.conn.begin()  # SQLite: BEGIN IMMEDIATE, the write lock
        E = store.s.Execution
        self.conn.execute(select(E).where(E.c.ExecutionID == execution_id).with_for_update())

    def renewal_waiting(self, store: CatalogStore) -> bool:
        if store.dialect != "postgresql":
            return True  # SQLite cannot show it: the caller waits past the renewal interval
        with self.engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query ILIKE '%UPDATE bfx.execution%'"
                )
            ).scalar_one()
        return bool(waiting)

    def release(self) -> None:
        self.trans.rollback()
        self.conn.close()
        self.engine.dispose()


def test_stopping_the_lease_keeper_leaves_no_renewal_after_stop_returns(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="airflow_provider_bfx")
    spec = TaskSpec(BatchSpec("lease_dag", "run-1"), "long", lease_owner=OWNER, lease_seconds=1.0)
    execution_id = store.start_task(spec).execution_id
    keeper = LeaseKeeper(store, execution_id, OWNER, 1.0).start()  # renews every second
    lock = RowLock(store, execution_id)
    try:
        time.sleep(keeper.interval + 0.5)  # the first renewal has started and waits on the lock
        assert wait_until(lambda: lock.renewal_waiting(store), 10.0), "no renewal in flight"
        threading.Timer(0.5, lock.release).start()  # the lock goes away while stop() runs
        keeper.stop()
        in_flight = keeper.renewing  # first: a read could wait on the lock itself
        assert not in_flight, "stop() returned with a renewal still in flight"
        stopped_at = lease_expires_at(store, execution_id)
    finally:
        keeper.stop()
        time.sleep(0.6)  # the timer has released the lock in every case
    time.sleep(1.0)  # a renewal left in flight would land now, the lock being free
    assert lease_expires_at(store, execution_id) == stopped_at
    # The try ends as the callbacks end it: nothing renews any more, so nothing warns.
    store.end_task(execution_id, TaskOutcome.SUCCESS)
    time.sleep(keeper.interval + 0.2)
    assert "no longer active" not in caplog.text
    assert "could not renew" not in caplog.text
