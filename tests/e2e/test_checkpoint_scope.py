"""A checkpoint written by one try is read by the next, whatever kind of retry it is: an Airflow
retry in the same run, a cleared task of the same run, and a later run that resumes the lineage.
The scope key is lineage + task package + item, never an execution ID (DESIGN.md §5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Catalog, clear_and_resume, run_dag, xcom_value

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_checkpoint_scope"


@pytest.fixture
def files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    listings, fail = tmp_path / "listings.txt", tmp_path / "fail.txt"
    monkeypatch.setenv("BFX_E2E_LISTINGS", str(listings))
    monkeypatch.setenv("BFX_E2E_FAIL", str(fail))
    return listings, fail


def test_an_airflow_retry_reads_the_checkpoint_of_the_failed_try(
    catalog: Catalog, files: tuple[Path, Path]
) -> None:
    listings, fail = files
    fail.write_text("first")
    run = run_dag(DAG_ID)
    assert run.state == "success"
    first_try, second_try = [
        r for r in catalog.rows(DAG_ID, run.run_id) if r.TaskId == "staged"
    ]  # two executions: one per Airflow try
    assert (first_try.ExecutionStatus, second_try.ExecutionStatus) == ("F", "S")
    assert listings.read_text().splitlines() == [
        f"listed in try 1 of execution {first_try.ExecutionID}"
    ]
    out = xcom_value(DAG_ID, run.run_id, "staged")
    assert out["listed_by"] == first_try.ExecutionID
    assert out["used_in_execution"] == second_try.ExecutionID


def test_a_cleared_task_and_a_resumed_run_read_the_same_checkpoint(
    catalog: Catalog, files: tuple[Path, Path]
) -> None:
    listings, fail = files
    fail.write_text("always")
    run = run_dag(DAG_ID)
    assert run.state == "failed"  # both tries failed, after listing once
    again = clear_and_resume(DAG_ID, run.run_id, ["staged"])  # cleared in the UI: same run
    assert again.state == "failed"
    fail.unlink()
    later = run_dag(DAG_ID)  # the next run resumes the failed lineage
    assert later.state == "success"
    rows = [r for r in catalog.rows(DAG_ID) if r.TaskId == "staged"]
    assert len(rows) == 5  # 2 tries, 2 tries after the clear, 1 in the resumed run
    assert len({r.LineageID for r in rows}) == 1
    (listed,) = listings.read_text().splitlines()
    assert listed == f"listed in try 1 of execution {rows[0].ExecutionID}"
    assert xcom_value(DAG_ID, later.run_id, "staged")["listed_by"] == rows[0].ExecutionID
