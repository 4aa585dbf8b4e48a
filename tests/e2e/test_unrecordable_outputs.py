"""A task is never skipped with a missing output (DESIGN.md §4, decision 0091).

A return value the catalog cannot hold (a ``datetime``) leaves the marker
``Payload IS NULL`` on the ``return_value`` checkpoint and a warning naming the task, the type and
the value; the next run that would skip that task as completed runs it again, so downstream gets
the real value, never ``None``. A producer whose recorded output is missing altogether runs again
when an ``.expand()`` maps over it (decision 0043's fallback).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Catalog, bfx_log, run_dag, xcom_value
from sqlalchemy import delete, select

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_unrecordable"
OUTPUTS_DAG = "bfx_e2e_outputs"


def executions(folder: Path) -> list[str]:
    path = folder / "executions"
    return path.read_text().splitlines() if path.exists() else []


def return_value_payloads(catalog: Catalog, dag_id: str) -> dict[str, Any]:
    """``{task_id: Payload}`` of the ``return_value`` checkpoints the DAG's tasks wrote."""
    store = catalog.store()
    try:
        C, E = store.s.ExecutionCheckpoint, store.s.Execution
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(E.c.TaskId, C.c.Payload)
                .select_from(C.join(E, E.c.ExecutionID == C.c.ExecutionID))
                .where(E.c.DagId == dag_id, C.c.NodeKey == "return_value")
            ).all()
        return {row.TaskId: row.Payload for row in rows}
    finally:
        store.engine.dispose()


def test_a_return_value_json_cannot_hold_reruns_its_producer_so_downstream_never_gets_none(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Run 1: the producers succeed (Airflow's XCom serves this run), their consumers fail.
    run1 = run_dag(DAG_ID, {"fail_tasks": ["use_stamp", "use_nothing"]})
    log1 = bfx_log(caplog)
    assert run1.state == "failed"
    assert run1.state_of("stamp") == run1.state_of("nothing") == "success"
    assert "[BFX_UNRECORDABLE_OUTPUT] task=stamp type=datetime.datetime" in log1
    assert "datetime.datetime(2024, 5, 17, 6, 30, tzinfo=datetime.timezone.utc)" in log1
    # The catalog says "completed, output not stored" (Payload NULL); a None return value
    # records nothing (there is nothing to serve).
    assert return_value_payloads(catalog, DAG_ID) == {"stamp": None}
    assert sorted(executions(copies_dir)) == ["nothing", "stamp"]
    caplog.clear()

    # Run 2 resumes: stamp runs again for its output, nothing is skipped as completed.
    run2 = run_dag(DAG_ID)
    log2 = bfx_log(caplog)
    assert run2.state == "success"
    assert run2.state_of("stamp") == "success"
    assert run2.state_of("nothing") == "skipped"
    again = executions(copies_dir)[2:]
    assert Counter(again) == Counter(
        [
            "stamp",
            "use_stamp:datetime:2024-05-17T06:30:00+00:00",
            "use_nothing:NoneType:None",
        ]
    )
    assert xcom_value(DAG_ID, run2.run_id, "use_stamp") == "2024-05-17T06:30:00+00:00"
    assert "task=stamp" in log2 and "(it was not JSON): running it again" in log2
    rows = catalog.task_rows(DAG_ID, run2.run_id)
    # The catalog still says completed-in-this-lineage for the producers it re-ran for output.
    assert rows[("stamp", -1)].ExecutionStatus == rows[("nothing", -1)].ExecutionStatus == "C"
    assert rows[("use_stamp", -1)].ExecutionStatus == "S"


def test_a_producer_of_an_expand_whose_recorded_output_is_missing_runs_again(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run1 = run_dag(OUTPUTS_DAG, {"fail_tasks": ["total"]})
    assert run1.state == "failed" and run1.state_of("make_list") == "success"
    assert Counter(executions(copies_dir))["make_list"] == 1
    # The recorded output of make_list is gone (a DBA's cleanup, a write lost to an outage).
    store = catalog.store()
    try:
        C, E = store.s.ExecutionCheckpoint, store.s.Execution
        writers = select(E.c.ExecutionID).where(E.c.DagId == OUTPUTS_DAG, E.c.TaskId == "make_list")
        with store.engine.begin() as conn:
            gone = conn.execute(
                delete(C).where(C.c.NodeKey == "return_value", C.c.ExecutionID.in_(writers))
            ).rowcount
    finally:
        store.engine.dispose()
    assert gone == 1
    caplog.clear()

    run2 = run_dag(OUTPUTS_DAG)
    log = bfx_log(caplog)
    assert run2.state == "success"
    # make_list ran again (it was not served: there was nothing to serve) ...
    assert run2.state_of("make_list") == "success"
    assert Counter(executions(copies_dir))["make_list"] == 2
    assert "task=make_list" in log
    assert "no recorded output to serve to the .expand() downstream: running it again" in log
    # ... so the mapped work downstream still resumed item by item, and total saw every item.
    assert [run2.state_of("fan", i) for i in range(3)] == ["skipped"] * 3
    assert xcom_value(OUTPUTS_DAG, run2.run_id, "total") == 600
