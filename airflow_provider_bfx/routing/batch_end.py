"""End a routed DAG run's batch from the DAG's own ``on_success_callback``/``on_failure_callback``.

The cluster policy appends these callbacks to every routed DAG (docs/decisions/0080). Airflow
runs DAG callbacks in the DAG processor under a real scheduler (never on the scheduler loop, in a
process that parsed the DAG file, so ``route_dag(catalog_conn_id=...)`` is honoured) and in the
process of ``dag.test()``. No listener is registered: a plugin listener would make Airflow refuse
every DAG with an ``end_from_trigger=True`` task, routed or not, and would run in the scheduler.

The run's end is adopted as evidence, with the state of each of its task instances when Airflow
can tell (``get_task_states``), so that a try whose own callback never reached the catalog is
closed in the same transaction shape as a DAG run marked by hand (:mod:`.evidence`). Like the
OpenLineage listener this never fails what it observes: an error is logged, and the next routed
start adopts the same outcome or reconciles the batch.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("airflow_provider_bfx.routing")


def _run_id(context: Any) -> str | None:
    run_id = context.get("run_id")
    if run_id:
        return str(run_id)
    dag_run = context.get("dag_run")
    value = getattr(dag_run, "run_id", None)
    return None if value is None else str(value)


def _task_states(dag: Any, run_id: str) -> dict[tuple[str, int], str | None]:
    """Airflow's state of each task of the run, or nothing where the process cannot ask."""
    from airflow_provider_bfx.routing.evidence import task_states_of_run

    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        return task_states_of_run(RuntimeTaskInstance, dag.dag_id, run_id, set(dag.task_ids))
    except Exception as exc:  # no supervisor here (e.g. an old dag.test path): batch end only
        log.debug("bfx: task states of %s/%s not available here: %s", dag.dag_id, run_id, exc)
        return {}


def end_batch(context: Any, *, succeeded: bool) -> None:
    """End the batch of the run in ``context`` with Airflow's outcome; log, never raise."""
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", "?")
    run_id = _run_id(context)
    try:
        if dag is None or run_id is None:
            log.warning("bfx: DAG callback without dag/run_id in its context; batch not ended")
            return
        from airflow_provider_bfx.catalog.evidence import RUN_FAILED, RUN_SUCCESS
        from airflow_provider_bfx.catalog.store import RunEvidence
        from airflow_provider_bfx.routing.catalog import get_store
        from airflow_provider_bfx.routing.settings import settings_for

        store = get_store(settings_for(dag).catalog_conn_id)
        evidence = RunEvidence(
            run_id, RUN_SUCCESS if succeeded else RUN_FAILED, _task_states(dag, run_id)
        )
        store.adopt_airflow_states(dag_id, [evidence])
        log.info(
            "bfx: DAG run %s/%s ended %s: its batch is closed in the catalog",
            dag_id,
            run_id,
            "success" if succeeded else "failed",
        )
    except Exception:
        log.exception(
            "bfx: could not close the batch of DAG run %s/%s in the catalog; the next routed"
            " task start adopts Airflow's outcome of it",
            dag_id,
            run_id,
        )


def on_dag_success(context: Any) -> None:
    end_batch(context, succeeded=True)


def on_dag_failure(context: Any) -> None:
    end_batch(context, succeeded=False)
