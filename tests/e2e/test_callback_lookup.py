"""A task callback run in another process finds its row in the catalog; a hand-edited code
there is an error naming the row (DESIGN.md §7), never a bare ``ValueError``.

The callbacks find the execution of their try from the gate's record in the same process, and
otherwise (a callback that runs in another process) look the row up by its
``ExternalExecutionID`` (decision 0042). That read goes through ``catalog.codes.parse_status``
like every other catalog read of a code.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Catalog, load_dag, run_dag

from airflow_provider_bfx import callbacks

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_run_conf"


def task_instance(run_id: str, task_id: str) -> Any:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == DAG_ID,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
            )
        ).one()
        session.expunge(ti)
    return ti


@pytest.mark.parametrize("catalog", ["sqlite"], indirect=True)  # SQLite lets a DBA skip CHECK
def test_a_callback_in_another_process_names_a_hand_edited_row(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    run = run_dag(DAG_ID)
    assert run.state == "success"
    row = catalog.task_rows(DAG_ID, run.run_id)[("second", -1)]
    catalog.hand_edit(row.ExecutionID, "ExecutionStatus", "X")
    caplog.clear()

    # The task's success callback, as a process that never ran the gate calls it.
    context = {"ti": task_instance(run.run_id, "second"), "dag": load_dag(DAG_ID)}
    callbacks.bfx_on_success(context)  # a callback never raises: it logs

    (record,) = [r for r in caplog.records if "could not record success" in r.getMessage()]
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert type(error).__name__ == "CorruptRowError"
    assert f"Execution row ExecutionID={row.ExecutionID} has ExecutionStatus='X'" in str(error)
    assert "bfx reset" in str(error)
