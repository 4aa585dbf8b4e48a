"""Close a routed DAG run's batch when the DAG run ends (``on_dag_run_success``/``_failed``).

Airflow calls these hooks in the process that decides the DAG run's state: the scheduler, the
API server (a state set by hand), or the ``dags test`` process. Like the OpenLineage listener,
this one never fails what it observes: every error is logged and swallowed, and the batch is
closed later by the task side (a final failure marks the batch failed) or by reconciliation at
the next batch start. The store's ``end_batch`` is idempotent and a DAG run that never had a
routed task has no batch row (it returns None), so a late or repeated call changes nothing.

The catalog is the one of ``[bfx] catalog_conn_id``: the scheduler only has the serialized DAG,
which does not carry ``route_dag(catalog_conn_id=...)``; such a DAG's batches are closed by
reconciliation (decision 0047).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger("airflow_provider_bfx.plugins")


def _routed(dag_run: Any) -> bool | None:
    """True/False when the DAG's tags say it; None when they cannot be read here."""
    from airflow_provider_bfx.routing.settings import route_all_dags

    try:
        if route_all_dags():
            return True
    except ValueError:
        pass
    dag = getattr(dag_run, "dag", None)
    tags = getattr(dag, "tags", None)
    if tags is None:
        return None
    return "bfx" in tags


def end_batch(dag_run: Any, *, succeeded: bool) -> None:
    """End the batch of ``dag_run`` in the catalog; log, never raise."""
    dag_id = getattr(dag_run, "dag_id", "?")
    run_id = getattr(dag_run, "run_id", "?")
    try:
        if _routed(dag_run) is False:
            return
        from airflow_provider_bfx.routing.catalog import get_store
        from airflow_provider_bfx.routing.settings import load_settings

        store = get_store(load_settings().catalog_conn_id)
        ended = store.end_batch(dag_id, run_id, succeeded=succeeded)
        if ended is not None:
            log.info(
                "bfx: DAG run %s/%s ended: batch execution %s is %s/%s",
                dag_id,
                run_id,
                ended.execution_id,
                ended.status.value,
                ended.next_load_status.value,
            )
    except Exception:
        log.exception(
            "bfx: could not close the batch of DAG run %s/%s in the catalog; the next batch start"
            " reconciles it",
            dag_id,
            run_id,
        )


class BfxDagRunListener:
    """Ends batches; ``on_dag_run_running`` is not used (``dags test`` never sends it)."""

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        end_batch(dag_run, succeeded=True)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        end_batch(dag_run, succeeded=False)
