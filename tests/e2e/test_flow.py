"""Branches, a task that skips itself, and Airflow retries inside one run, through the gate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import Catalog, bfx_log, run_dag, xcom_value
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_flow"


def executions(folder: Path) -> Counter[str]:
    path = folder / "executions"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


def test_branch_runs_again_on_resume_and_the_path_not_taken_stays_skipped(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run1 = run_dag(DAG_ID, {"fail_tasks": ["left_after"]})
    assert run1.state == "failed"
    assert run1.state_of("choose") == "success"
    assert run1.state_of("left") == "success"
    assert run1.state_of("left_after") == "failed"
    assert run1.state_of("right") == "skipped"  # by the branch: never reaches the gate
    # right_after's upstream was skipped by the branch, not as completed: all_success holds
    assert run1.state_of("right_after") == "skipped"
    rows1 = catalog.task_rows(DAG_ID, run1.run_id)
    assert ("right", -1) not in rows1 and ("right_after", -1) not in rows1
    assert "[BFX_UPSTREAM_SKIPPED] dag=bfx_e2e_flow task=right_after upstream=right" in bfx_log(
        caplog
    )
    caplog.clear()

    run2 = run_dag(DAG_ID)
    assert run2.state == "success"
    # the branch decides again (it is never skipped as completed) and takes the same path
    assert run2.state_of("choose") == "success"
    assert run2.state_of("left") == "skipped"  # completed in run 1
    assert run2.state_of("left_after") == "success"
    assert xcom_value(DAG_ID, run2.run_id, "left_after") == "left+after"  # replayed input
    assert run2.state_of("right") == run2.state_of("right_after") == "skipped"
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    assert rows2[("choose", -1)].ExecutionStatus == "S"
    assert rows2[("choose", -1)].AttemptNumber == 2
    assert rows2[("left", -1)].ExecutionStatus == "C"
    assert rows2[("left_after", -1)].OriginalExecutionID == rows1[("left_after", -1)].ExecutionID
    assert executions(copies_dir)["choose"] == 2
    assert executions(copies_dir)["left"] == 1
    assert executions(copies_dir)["right"] == executions(copies_dir)["right_after"] == 0


def test_task_that_skips_itself_is_recorded_and_its_downstream_is_skipped(
    catalog: Catalog, copies_dir: Path
) -> None:
    run = run_dag(DAG_ID)
    assert run.state == "success"
    assert run.state_of("nothing_to_do") == "skipped"
    assert run.state_of("after_nothing") == "skipped"
    rows = catalog.task_rows(DAG_ID, run.run_id)
    own = rows[("nothing_to_do", -1)]
    assert (own.ExecutionStatus, own.NextLoadStatus) == ("C", "P")  # its own logic: C/P
    assert own.LeaseOwner is not None  # it ran (the gate did not skip it)
    assert ("after_nothing", -1) not in rows
    assert executions(copies_dir)["nothing_to_do"] == 1
    assert executions(copies_dir)["after_nothing"] == 0


def test_airflow_retry_inside_one_run_records_the_failed_try_and_its_retry(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    run = run_dag(DAG_ID)
    assert run.state == "success"
    assert run.state_of("flaky") == "success"
    assert xcom_value(DAG_ID, run.run_id, "flaky") == 2
    tries = sorted(
        (r for r in catalog.rows(DAG_ID, run.run_id) if r.TaskId == "flaky"),
        key=lambda r: r.TryNumber,
    )
    # (the run succeeded, so the lineage is closed: every NextLoadStatus is back to P)
    assert [(r.TryNumber, r.ExecutionStatus, r.NextLoadStatus) for r in tries] == [
        (1, "F", "P"),
        (2, "S", "P"),
    ]
    first, second = tries
    assert second.OriginalExecutionID == first.ExecutionID
    assert second.AttemptNumber == 2
    assert (
        f"[BFX_RETRY] dag={DAG_ID} task=flaky batch_execution_id={first.ParentExecutionID}"
        f" execution_id={second.ExecutionID} prior_execution_id={first.ExecutionID}"
    ) in bfx_log(caplog)
    prefix = "bfx." if catalog.kind == "postgresql" else ""
    engine = create_engine(catalog.url)
    try:
        with engine.connect() as conn:
            errors = conn.execute(
                text(f"SELECT ErrorType, ErrorMessage FROM {prefix}ExecutionError"),
            ).all()
    finally:
        engine.dispose()
    assert [tuple(e) for e in errors] == [("builtins.RuntimeError", "flaky: first try fails")]
