"""Mapped work is resumed by item identity (fingerprint of the input), never by map index."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import Catalog, run_dag, xcom_value

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_items"


def executions(folder: Path) -> Counter[str]:
    path = folder / "executions"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


def test_reordered_and_grown_items_resume_by_identity_not_by_position(
    catalog: Catalog, copies_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BFX_E2E_ITEMS", "[1, 2, 3]")
    run1 = run_dag(DAG_ID, {"fail_items": [2]})
    assert run1.state == "failed"
    assert [run1.state_of("process", i) for i in range(3)] == ["success", "failed", "success"]
    rows1 = catalog.task_rows(DAG_ID, run1.run_id)

    # The list is reordered and grows: index 0 is now item 3, index 2 item 1, index 3 is new.
    monkeypatch.setenv("BFX_E2E_ITEMS", "[3, 2, 1, 4]")
    run2 = run_dag(DAG_ID)
    assert run2.state == "success"
    assert [run2.state_of("process", i) for i in range(4)] == [
        "skipped",  # item 3: completed in run 1 (at index 2)
        "success",  # item 2: failed in run 1, retried
        "skipped",  # item 1: completed in run 1 (at index 0)
        "success",  # item 4: new
    ]
    assert executions(copies_dir) == {"item:1": 1, "item:2": 1, "item:3": 1, "item:4": 1}
    assert xcom_value(DAG_ID, run2.run_id, "summary") == [10, 20, 30, 40]

    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    by_item = {r.ItemFingerprint: r for r in rows1.values() if r.TaskId == "process"}
    assert rows2[("process", 0)].OriginalExecutionID == rows1[("process", 2)].ExecutionID
    assert rows2[("process", 2)].OriginalExecutionID == rows1[("process", 0)].ExecutionID
    assert rows2[("process", 1)].OriginalExecutionID == rows1[("process", 1)].ExecutionID
    assert rows2[("process", 1)].AttemptNumber == 2
    assert rows2[("process", 3)].ItemFingerprint not in by_item
    assert rows2[("process", 3)].AttemptNumber == 1
