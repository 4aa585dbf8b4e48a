"""A task skipped as completed still serves its output to the current run (replay)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import Catalog, bfx_log, run_dag, xcom_value

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_outputs"


def executions(folder: Path) -> Counter[str]:
    path = folder / "executions"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


def test_skipped_producers_serve_their_recorded_outputs_to_consumers_and_to_expand(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run1 = run_dag(DAG_ID, {"fail_tasks": ["consume", "total"]})
    assert run1.state == "failed"
    assert run1.state_of("consume") == run1.state_of("total") == "failed"
    before = executions(copies_dir)
    assert before == {"produce": 1, "make_list": 1, "fan:1": 1, "fan:2": 1, "fan:3": 1}
    caplog.clear()

    run2 = run_dag(DAG_ID)
    log = bfx_log(caplog)
    assert run2.state == "success"
    # produce: skipped as completed, its return value replayed for the plain consumer
    assert run2.state_of("produce") == "skipped"
    assert xcom_value(DAG_ID, run2.run_id, "produce") == [10, 20, 30]
    assert xcom_value(DAG_ID, run2.run_id, "consume") == 60
    # make_list feeds an .expand(): served as SUCCESS with its recorded output, body not run
    assert run2.state_of("make_list") == "success"
    assert xcom_value(DAG_ID, run2.run_id, "make_list") == [1, 2, 3]
    assert "task=make_list" in log and "served=success" in log
    # the expanded instances were skipped as completed, their outputs replayed for total
    assert [run2.state_of("fan", i) for i in range(3)] == ["skipped"] * 3
    assert [xcom_value(DAG_ID, run2.run_id, "fan", i) for i in range(3)] == [100, 200, 300]
    assert xcom_value(DAG_ID, run2.run_id, "total") == 600
    # only the two failed tasks did any work again
    assert executions(copies_dir) - before == {"consume": 1, "total": 1}

    rows = catalog.task_rows(DAG_ID, run2.run_id)
    assert rows[("make_list", -1)].ExecutionStatus == "C"  # the catalog says what happened
    assert rows[("produce", -1)].ExecutionStatus == "C"
    assert {rows[("fan", i)].ExecutionStatus for i in range(3)} == {"C"}
    assert rows[("consume", -1)].ExecutionStatus == rows[("total", -1)].ExecutionStatus == "S"
