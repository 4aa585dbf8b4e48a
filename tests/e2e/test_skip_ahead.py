"""Skip ahead (decision 0106) in ``dag.test()``: the first task of a resumed run writes the
completed tasks' ``C`` rows and has Airflow skip them before they are scheduled, with their
outputs (``multiple_outputs`` keys included) replayed as their XComs. The deployment story
(tests/deployment/fifty_tables.py) proves it with real task processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import Catalog, RunResult, bfx_log, run_dag, xcom_value

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_skip_ahead"


def executions(folder: Path) -> Counter[str]:
    path = folder / "executions"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


def _failed_then_resumed(copies_dir: Path) -> RunResult:
    run1 = run_dag(DAG_ID, {"fail": True})
    assert run1.state == "failed" and run1.state_of("check") == "failed"
    before = executions(copies_dir)
    assert before == {"start": 1, "extract": 1, "choose": 1, "left": 1}
    run2 = run_dag(DAG_ID)
    assert run2.state == "success"
    # Nothing that completed ran again but the branch, which decides the run's shape again.
    assert executions(copies_dir) - before == {"choose": 1, "check": 1}
    return run2


def test_completed_tasks_are_skipped_ahead_with_their_outputs(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run2 = _failed_then_resumed(copies_dir)
    log = bfx_log(caplog)
    rows = catalog.task_rows(DAG_ID, run2.run_id)
    run_id = run2.run_id
    # start decided for itself (try 1) and skipped extract and left ahead (try 0, no lease):
    # no try of theirs ever started, yet Airflow shows them skipped.
    tries = {t: rows[(t, -1)].TryNumber for t in ("start", "extract", "left", "choose", "check")}
    assert tries == {"start": 1, "extract": 0, "left": 0, "choose": 1, "check": 1}
    assert {run2.state_of(t) for t in ("start", "extract", "left")} == {"skipped"}
    assert rows[("extract", -1)].ExecutionStatus == rows[("left", -1)].ExecutionStatus == "C"
    assert rows[("extract", -1)].LeaseOwner is None
    assert "bfx: skipped ahead 2 completed tasks of this resumed run" in log
    # The replayed outputs: check pulled extract's keys and left's value.
    assert xcom_value(DAG_ID, run_id, "extract") == {"rows": 3, "name": "orders-s"}
    assert xcom_value(DAG_ID, run_id, "check") == "orders-s:3:L"


def test_skip_ahead_off_leaves_each_task_to_its_own_start(
    catalog: Catalog,
    copies_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__SKIP_AHEAD", "False")
    run2 = _failed_then_resumed(copies_dir)
    rows = catalog.task_rows(DAG_ID, run2.run_id)
    assert {rows[(t, -1)].TryNumber for t in ("start", "extract", "left")} == {1}
    assert "skipped ahead" not in bfx_log(caplog)
    assert xcom_value(DAG_ID, run2.run_id, "check") == "orders-s:3:L"


@pytest.mark.parametrize("catalog", ["sqlite"], indirect=True)  # SQLite lets a DBA skip CHECK
def test_a_hand_edited_row_stops_skip_ahead_but_not_the_first_task(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Skip ahead is one transaction: a corrupt row of one candidate rolls all of it back with
    a warning; the first task's own start stands, and the task whose row is corrupt meets the
    error itself, with the message that names the row."""
    run1 = run_dag(DAG_ID, {"fail": True})
    assert run1.state == "failed"
    row = catalog.task_rows(DAG_ID, run1.run_id)[("left", -1)]
    catalog.hand_edit(row.ExecutionID, "NextLoadStatus", "X")
    caplog.clear()

    run2 = run_dag(DAG_ID)
    log = bfx_log(caplog)
    assert "bfx: skip ahead failed in the catalog (CorruptRowError" in log
    assert "skipped ahead" not in log
    rows = catalog.task_rows(DAG_ID, run2.run_id)
    assert rows[("start", -1)].TryNumber == 1 and run2.state_of("start") == "skipped"
    # Nothing was written ahead: extract decided for itself; left failed on its corrupt row.
    assert rows[("extract", -1)].TryNumber == 1 and run2.state_of("extract") == "skipped"
    assert ("left", -1) not in rows and run2.state_of("left") == "failed"
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Execution row ExecutionID={row.ExecutionID} has NextLoadStatus='X'" in messages
