"""A task attempt outside Airflow for the foreach tests: a real store, a real execution handle.

``python -m tests.foreach_worker URL RUN_ID ITEMS_JSON WORK_FILE DIE_AT``: one attempt of the
task ``load`` of DAG ``foreach_dag`` that loops over the items with ``bfx.foreach`` and appends
each item it works on to ``WORK_FILE``. When it is about to work on the item at index ``DIE_AT``
it SIGKILLs itself: a real worker death mid-loop, with its execution row left active under a
lease nobody renews (``-1``: never dies; the attempt then ends the task and batch successfully).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from airflow_provider_bfx.catalog.codes import VersionMismatchPolicy
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.routing.handle import ExecutionHandle

DAG_ID = "foreach_dag"
TASK_ID = "load"
LEASE_SECONDS = 1.0


def open_handle(
    store: CatalogStore,
    run_id: str,
    *,
    operator_fingerprint: str = "v1",
    policy: VersionMismatchPolicy = VersionMismatchPolicy.WARN,
    lease_seconds: float = LEASE_SECONDS,
) -> ExecutionHandle:
    """Start ``load`` in run ``run_id`` the way the gate does and build its handle."""
    spec = TaskSpec(
        BatchSpec(DAG_ID, run_id),
        TASK_ID,
        operator_fingerprint=operator_fingerprint,
        policy=policy,
        lease_owner=f"test:{os.getpid()}",
        lease_seconds=lease_seconds,
    )
    started = store.start_task(spec)
    assert started.run is Run.RUN, started
    return ExecutionHandle.of_start(started, store, spec)


def main(url: str, run_id: str, items_json: str, work_file: str, die_at: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    store = CatalogStore(create_catalog_engine(url))
    handle = open_handle(store, run_id)
    items = json.loads(items_json)
    with open(work_file, "a", encoding="utf-8") as work:
        for item in handle.foreach(items, key=lambda i: i["name"]):
            if die_at >= 0 and item["name"] == items[die_at]["name"]:
                os.kill(os.getpid(), signal.SIGKILL)
            work.write(item["name"] + "\n")
            work.flush()
    store.end_task(handle.execution_id, TaskOutcome.SUCCESS)
    store.end_batch(DAG_ID, run_id, succeeded=True)


if __name__ == "__main__":
    url, run_id, items_json, work_file, die_at = sys.argv[1:6]
    main(url, run_id, items_json, work_file, int(die_at))
