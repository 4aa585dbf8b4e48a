"""``python nested_runner.py DAGS_FOLDER SECONDS STOP_FILE DAG_ID...``: run the DAG runs that
a parent's ``TriggerDagRunOperator`` triggers, the way a scheduler would, in a process of its own.

``dag.test()`` runs its own DAG run only: a run that one of its tasks triggers stays *queued* in
the metadata database. This process picks up every queued run of the given DAGs, marks it
running and runs its tasks with the same minimal loop ``dag.test()`` uses (``update_state`` then
``_run_task`` for each scheduled task instance), so the triggered run itself is executed: the
same run_id, the same conf, the same metadata rows the parent's trigger task polls for.

It stops when STOP_FILE exists, after SECONDS, or when its parent process is gone; a test that
cannot wait for that kills it by pid. The Airflow environment
(``AIRFLOW_HOME``, the metadata database, the catalog connection) comes from the parent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

POLL_SECONDS = 0.2


def _queued(dag_ids: list[str]) -> list[tuple[str, str]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(DagRun.dag_id, DagRun.run_id)
            .where(DagRun.dag_id.in_(dag_ids), DagRun.state == DagRunState.QUEUED)
            .order_by(DagRun.id)
        ).all()
    return [(dag_id, run_id) for dag_id, run_id in rows]


def _run(dags: dict[str, Any], dag_id: str, run_id: str) -> str:
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    dag = dags[dag_id]
    assert settings.Session is not None, "Airflow's ORM is not configured"
    session = settings.Session()
    try:
        dag_run = session.scalar(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
        assert dag_run is not None
        dag_run.state = DagRunState.RUNNING
        dag_run.start_date = timezone.utcnow()
        session.commit()
        scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        # As dag.test() does: carry the DAG callbacks (which close the batch) over.
        scheduler_dag.on_success_callback = dag.on_success_callback  # type: ignore[attr-defined]
        scheduler_dag.on_failure_callback = dag.on_failure_callback  # type: ignore[attr-defined]
        dag_run.dag = scheduler_dag
        while dag_run.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = dag_run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
                ti.scheduled_dttm = timezone.utcnow()
            session.commit()
            for ti in dag_run.get_task_instances(session=session):
                if ti.state == TaskInstanceState.SCHEDULED:
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        return str(getattr(dag_run.state, "value", dag_run.state))
    finally:
        session.close()


def main(folder: str, seconds: float, stop_file: str, dag_ids: list[str]) -> int:
    from airflow.dag_processing.dagbag import DagBag

    parent = os.getppid()
    bag = DagBag(dag_folder=folder)
    dags = {dag_id: bag.get_dag(dag_id) for dag_id in dag_ids}
    missing = [dag_id for dag_id, dag in dags.items() if dag is None]
    assert not missing, (missing, bag.import_errors)
    print(f"nested_runner: watching {dag_ids}", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and os.getppid() == parent and not os.path.exists(stop_file):
        for dag_id, run_id in _queued(dag_ids):
            print(f"nested_runner: running {dag_id}/{run_id}", flush=True)
            state = _run(dags, dag_id, run_id)
            print(f"nested_runner: {dag_id}/{run_id} ended {state}", flush=True)
        time.sleep(POLL_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]))
