"""``python dag_test_worker.py DAGS_FOLDER DAG_ID LOGICAL_DATE``: one ``dag.test()`` run in its
own process (the Airflow environment comes from the parent), for a test to SIGKILL mid-task."""

from __future__ import annotations

import sys
from datetime import datetime

from airflow.dag_processing.dagbag import DagBag

if __name__ == "__main__":
    folder, dag_id, logical_date = sys.argv[1:4]
    dag = DagBag(dag_folder=folder).get_dag(dag_id)
    assert dag is not None, dag_id
    dag.test(logical_date=datetime.fromisoformat(logical_date))
