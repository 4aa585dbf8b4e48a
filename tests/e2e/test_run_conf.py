"""A run's ``{"bfx": ...}`` conf: understood, or the run's tasks fail before any work (DESIGN §7).

An instruction that is not understood (not a mapping, an unknown key, an unknown mode, a value of
the wrong type) is never taken for "nothing was said": every routed task of the run fails before
its own code runs and before the catalog is touched, Airflow's retries do not apply, and the error
names the valid keys and values (decision 0092). ``mode`` ``full``/``resume`` keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Catalog, run_dag

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_run_conf"


def executions(folder: Path) -> list[str]:
    path = folder / "executions"
    return path.read_text().splitlines() if path.exists() else []


def try_numbers(run_id: str) -> dict[str, int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.try_number).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id
            )
        ).all()
    return {task_id: number for task_id, number in rows}


@pytest.mark.parametrize(
    ("bfx", "named"),
    [
        pytest.param(
            {"mode": "bogus"},
            "bfx.mode='bogus' is not a mode (valid: 'full' or 'resume')",
            id="mode",
        ),
        pytest.param("x", "bfx='x' is not understood: it must be a mapping", id="not-a-mapping"),
        pytest.param(
            {"mdoe": "full"},
            "unknown key(s) 'mdoe' (valid: 'mode', 'parent_execution_id')",
            id="key",
        ),
        pytest.param({"mode": 1}, "bfx.mode=1 is not a mode", id="mode-type"),
    ],
)
def test_a_bfx_conf_that_is_not_understood_fails_the_run_before_any_work(
    catalog: Catalog,
    copies_dir: Path,
    capfd: pytest.CaptureFixture[str],
    bfx: Any,
    named: str,
) -> None:
    run = run_dag(DAG_ID, conf={"bfx": bfx})
    assert run.state == "failed"
    assert run.state_of("first") == "failed"
    assert run.state_of("second") == "upstream_failed"
    assert try_numbers(run.run_id)["first"] == 1  # no retry: the conf cannot change
    assert executions(copies_dir) == []  # the task's own code never ran
    assert catalog.rows(DAG_ID) == []  # nothing was written to the catalog
    out, err = capfd.readouterr()  # the task's failure, as the task runner logs it
    assert named in out + err
    assert '{"bfx": {"mode": "full" | "resume", "parent_execution_id":' in out + err


def test_mode_full_starts_fresh_and_mode_resume_resumes(catalog: Catalog, copies_dir: Path) -> None:
    failed = run_dag(DAG_ID, conf={"fail_tasks": ["second"]})
    assert failed.state == "failed"
    assert executions(copies_dir) == ["first", "second", "second", "second"]  # 3 tries

    resumed = run_dag(DAG_ID, conf={"bfx": {"mode": "resume"}, "fail_tasks": ["second"]})
    assert resumed.state_of("first") == "skipped"  # resumed: first is already done

    fresh = run_dag(DAG_ID, conf={"bfx": {"mode": "FULL"}})
    assert fresh.state == "success"
    assert fresh.state_of("first") == "success"  # a fresh lineage runs everything again
    assert catalog.batch_row(DAG_ID, fresh.run_id).AttemptNumber == 1
    assert executions(copies_dir)[-2:] == ["first", "second"]
