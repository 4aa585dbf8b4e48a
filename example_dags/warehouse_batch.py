"""A nightly warehouse batch: 50 table loads in five lines of ten, then ``merge``, then
``publish``; tagged ``bfx``, so the provider routes every task through the catalog.

When a run fails at table 48, the next run skips the 47 tables already loaded (their tasks end
*skipped*, their return values are replayed for ``merge``), loads 48 again, loads 49 and 50 for
the first time, then merges and publishes. Ask for a full reload with
``{"bfx": {"mode": "full"}}`` as the run's conf.

Trying it out:

* ``{"fail_tables": ["load_table_48"]}`` in the run's conf makes that load fail (as an
  injected error); ``{"fail_tables": ...}`` with any task ids works the same way.
* When the environment variable ``BFX_EXAMPLE_COPY_DIR`` names a directory, every load that
  really copies appends one line to ``<dir>/<table>.copies``: count the lines to see which
  tables a resumed run copied again (none of the finished ones).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, chain, task

TABLES = [f"table_{n:02d}" for n in range(1, 51)]
COPY_DIR_ENV = "BFX_EXAMPLE_COPY_DIR"


def _fail_requested(context: dict[str, Any]) -> bool:
    conf = context["dag_run"].conf or {}
    return context["ti"].task_id in (conf.get("fail_tables") or [])


@task
def load_table(table: str, **context: Any) -> dict[str, Any]:
    """Copy one source table into the warehouse's staging area."""
    if _fail_requested(context):
        raise RuntimeError(f"{table}: injected failure (dag_run.conf fail_tables)")
    copy_dir = os.environ.get(COPY_DIR_ENV)
    if copy_dir:
        with open(Path(copy_dir) / f"{table}.copies", "a", encoding="utf-8") as log:
            log.write(f"{context['run_id']}\n")
    return {"table": table, "rows": 1000 + int(table[-2:])}


@task
def merge(loaded: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """Merge the staged tables into the warehouse model."""
    if _fail_requested(context):
        raise RuntimeError("merge: injected failure (dag_run.conf fail_tables)")
    return {"tables": len(loaded), "rows": sum(item["rows"] for item in loaded)}


@task
def publish(merged: dict[str, Any], **context: Any) -> str:
    """Make the new model visible to readers."""
    if _fail_requested(context):
        raise RuntimeError("publish: injected failure (dag_run.conf fail_tables)")
    return f"published {merged['tables']} tables, {merged['rows']} rows"


with DAG(
    dag_id="warehouse_batch",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx", "example"],
    default_args={"retries": 0},
    doc_md=__doc__,
):
    loads = [load_table.override(task_id=f"load_{t}")(t) for t in TABLES]
    # Five extract slots on the source system: five lines of ten loads, one after another.
    for line in range(0, len(loads), 10):
        chain(*loads[line : line + 10])
    publish(merge(loads))
