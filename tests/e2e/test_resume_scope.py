"""Which later run resumes a failed batch (``resume_scope``), and a changed task under RERUN.

DAG ``bfx_e2e_scope``: ``stable`` and ``changing`` feed ``last``; run 1 fails ``last`` after both
succeeded. Each test asserts the Airflow task states, the catalog rows and the marker file that
says which task bodies actually ran.

A run "of the same logical date" is a second ``dag.test()`` with that logical date: Airflow
deletes its earlier DagRun and makes a new one (new run_id), so the catalog sees a NEW batch of
the same logical date, which is exactly what ``resume_scope = logical_date`` decides on. (The
cleared-and-rerun same DagRun is ``test_same_run.py``: it reopens its own batch whatever the
scope.) See decision 0050.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Catalog, bfx_log, next_logical_date, run_dag

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_scope"
TASKS = ("stable", "changing", "last")


def ran(copies_dir: Path) -> list[str]:
    """The task bodies that ran, in order: ``task:ds:status`` (the status it started as)."""
    path = copies_dir / "executions"
    return path.read_text().splitlines() if path.exists() else []


def fail_first_run(catalog: Catalog, copies_dir: Path, logical_date: object = None) -> object:
    run1 = run_dag(DAG_ID, {"fail_tasks": ["last"]}, logical_date)  # type: ignore[arg-type]
    assert run1.state == "failed"
    assert [run1.state_of(t) for t in TASKS] == ["success", "success", "failed"]
    batch1 = catalog.batch_row(DAG_ID, run1.run_id)
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")
    rows1 = catalog.task_rows(DAG_ID, run1.run_id)
    assert [(rows1[(t, -1)].ExecutionStatus) for t in TASKS] == ["S", "S", "F"]
    assert len(ran(copies_dir)) == 2  # stable and changing
    return batch1


def test_lineage_scope_resumes_a_failed_batch_from_a_later_logical_date(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d1 = next_logical_date()
    batch1 = fail_first_run(catalog, copies_dir, d1)
    caplog.clear()

    d2 = next_logical_date()  # a later interval; resume_scope = lineage is the default
    assert d2 > d1
    run2 = run_dag(DAG_ID, logical_date=d2)
    assert run2.state == "success"
    assert [run2.state_of(t) for t in TASKS] == ["skipped", "skipped", "success"]

    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.ExecutionID != batch1.ExecutionID
    assert batch2.AttemptNumber == 2
    assert batch2.OriginalExecutionID == batch1.ExecutionID
    assert batch2.LineageID == batch1.LineageID
    assert (batch2.ExecutionStatus, batch2.NextLoadStatus) == ("S", "P")
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    assert [rows2[(t, -1)].ExecutionStatus for t in TASKS] == ["C", "C", "S"]
    assert rows2[("last", -1)].AttemptNumber == 2
    log = bfx_log(caplog)
    assert f"[BFX_SKIP_COMPLETED] dag={DAG_ID} task=stable" in log
    assert f"[BFX_SKIP_COMPLETED] dag={DAG_ID} task=changing" in log
    d2s = d2.strftime("%Y-%m-%d")
    assert ran(copies_dir)[2:] == [f"last:{d2s}:R"]  # only the failed task ran, as R


def test_logical_date_scope_starts_a_later_interval_fresh(
    catalog: Catalog,
    copies_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__RESUME_SCOPE", "logical_date")  # the [bfx] option
    batch1 = fail_first_run(catalog, copies_dir)
    caplog.clear()

    run2 = run_dag(DAG_ID)  # the next logical date
    assert run2.state == "success"
    assert [run2.state_of(t) for t in TASKS] == ["success", "success", "success"]

    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.AttemptNumber == 1
    assert batch2.OriginalExecutionID == batch2.ExecutionID  # a new lineage
    assert batch2.LineageID != batch1.LineageID
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    assert [rows2[(t, -1)].ExecutionStatus for t in TASKS] == ["S", "S", "S"]
    assert all(rows2[(t, -1)].LineageID == batch2.LineageID for t in TASKS)
    assert "[BFX_SKIP_COMPLETED]" not in bfx_log(caplog)
    started = sorted(line.split(":")[::2] for line in ran(copies_dir)[2:])
    assert started == sorted([t, "E"] for t in TASKS)  # all three ran again, fresh


def test_logical_date_scope_resumes_a_run_of_the_same_logical_date(
    catalog: Catalog,
    copies_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BFX_E2E_SCOPE_RESUME_SCOPE", "logical_date")  # route_dag's override
    d1 = next_logical_date()
    batch1 = fail_first_run(catalog, copies_dir, d1)
    caplog.clear()

    # The same interval again: dag.test() deletes run 1's DagRun and makes a new one.
    run2 = run_dag(DAG_ID, logical_date=d1)
    assert run2.run_id != batch1.ExternalExecutionID.split("/", 1)[1]
    assert run2.state == "success"
    assert [run2.state_of(t) for t in TASKS] == ["skipped", "skipped", "success"]

    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.ExecutionID != batch1.ExecutionID
    assert batch2.LogicalDate == batch1.LogicalDate
    assert batch2.AttemptNumber == 2
    assert batch2.OriginalExecutionID == batch1.ExecutionID
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    assert [rows2[(t, -1)].ExecutionStatus for t in TASKS] == ["C", "C", "S"]
    assert f"[BFX_SKIP_COMPLETED] dag={DAG_ID} task=stable" in bfx_log(caplog)
    assert [line.split(":")[::2] for line in ran(copies_dir)[2:]] == [["last", "R"]]


def test_rerun_policy_runs_only_the_changed_task_again_and_skips_the_rest(
    catalog: Catalog,
    copies_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__VERSION_MISMATCH_POLICY", "RERUN")
    monkeypatch.setenv("BFX_E2E_SCOPE_COMMAND", "load {{ ds }}")
    batch1 = fail_first_run(catalog, copies_dir)
    rows1 = catalog.task_rows(DAG_ID, batch1.ExternalExecutionID.split("/", 1)[1])
    caplog.clear()

    monkeypatch.setenv("BFX_E2E_SCOPE_COMMAND", "load --full {{ ds }}")  # a changed definition
    run2 = run_dag(DAG_ID)
    assert run2.state == "success"
    assert [run2.state_of(t) for t in TASKS] == ["skipped", "success", "success"]

    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.OriginalExecutionID == batch1.ExecutionID  # still a resume
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    changed = rows2[("changing", -1)]
    assert rows2[("stable", -1)].ExecutionStatus == "C"
    assert (changed.ExecutionStatus, changed.NextLoadStatus) == ("S", "P")
    assert changed.OperatorFingerprint != rows1[("changing", -1)].OperatorFingerprint
    assert rows2[("last", -1)].ExecutionStatus == "S"
    log = bfx_log(caplog)
    mismatch = [line for line in log.splitlines() if "[BFX_FINGERPRINT_MISMATCH]" in line]
    assert len(mismatch) == 1, log
    assert "task=changing" in mismatch[0] and "policy=RERUN" in mismatch[0]
    assert f"[BFX_SKIP_COMPLETED] dag={DAG_ID} task=stable" in log
    # the changed task ran again as R (its recorded state discarded), then the failed one
    started = [line.split(":")[::2] for line in ran(copies_dir)[2:]]
    assert started == [["changing", "R"], ["last", "R"]]
