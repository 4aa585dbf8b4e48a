"""``python crash_worker.py DAGS_FOLDER DAG_ID LOGICAL_DATE``: one ``dag.test()`` run in its own
process (the Airflow and catalog environment comes from the parent), for a test to SIGKILL
mid-task or to run next to another DAG run. ``dag.test()`` runs each task in this process, so
this process is the task process: its pid is the one in the lease owner (``host:pid``)."""

from __future__ import annotations

import sys
from datetime import datetime

from airflow.dag_processing.dagbag import DagBag

if __name__ == "__main__":
    folder, dag_id, logical_date = sys.argv[1:4]
    dag = DagBag(dag_folder=folder).get_dag(dag_id)
    assert dag is not None, dag_id
    dag_run = dag.test(logical_date=datetime.fromisoformat(logical_date))
    print(f"crash_worker: run_id={dag_run.run_id} state={dag_run.state}", flush=True)
