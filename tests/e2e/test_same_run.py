"""Clearing the tasks of a failed DAG run and running that same run again."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Catalog, bfx_log, clear_and_resume, run_dag

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_tiny"


def test_cleared_run_reopens_its_batch_skips_what_completed_and_retries_the_failure(
    catalog: Catalog,
    copies_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BFX_E2E_BROKEN", "after")
    run = run_dag(DAG_ID)
    assert run.state == "failed"
    assert run.state_of("work") == "success"
    assert run.state_of("after") == "failed"
    batch = catalog.batch_row(DAG_ID, run.run_id)
    assert (batch.ExecutionStatus, batch.NextLoadStatus) == ("F", "R")
    caplog.clear()

    # The cause is fixed; the operator clears the whole run (both tasks) in the UI.
    monkeypatch.delenv("BFX_E2E_BROKEN")
    again = clear_and_resume(DAG_ID, run.run_id, ["work", "after"])
    assert again.state == "success"
    assert again.state_of("work") == "skipped"  # completed in this run's first pass
    assert again.state_of("after") == "success"

    rows = sorted(
        (r for r in catalog.rows(DAG_ID, run.run_id) if r.TaskId is not None),
        key=lambda r: r.ExecutionID,
    )
    assert [(r.TaskId, r.TryNumber, r.ExecutionStatus) for r in rows] == [
        ("work", 1, "S"),
        ("after", 1, "F"),
        ("work", 2, "C"),
        ("after", 2, "S"),
    ]
    assert rows[2].OriginalExecutionID == rows[0].ExecutionID
    assert rows[3].OriginalExecutionID == rows[1].ExecutionID
    assert rows[3].AttemptNumber == 2
    reopened = catalog.batch_row(DAG_ID, run.run_id)
    assert reopened.ExecutionID == batch.ExecutionID  # one batch row per DAG run, reopened
    assert (reopened.ExecutionStatus, reopened.NextLoadStatus) == ("S", "P")
    log = bfx_log(caplog)
    assert f"[BFX_SKIP_COMPLETED] dag={DAG_ID} task=work" in log
    assert f"[BFX_RETRY] dag={DAG_ID} task=after" in log
    ran = (copies_dir / "executions").read_text().splitlines()
    assert [line.split(":")[0] for line in ran] == ["work", "after"]  # work copied once
