"""``bfx.foreach`` in a real Airflow task: a failed run at table 62 of 100, then the resumed run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import Catalog, bfx_log, run_dag

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_foreach"
TABLES = [f"dbo.table_{n:03d}" for n in range(1, 101)]


def test_the_resumed_run_loads_only_the_tables_after_the_failure(
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    work, broken = tmp_path / "work.txt", tmp_path / "break.txt"
    monkeypatch.setenv("BFX_E2E_WORK", str(work))
    monkeypatch.setenv("BFX_E2E_BREAK", str(broken))
    broken.write_text("dbo.table_062")

    first = run_dag(DAG_ID)
    assert first.state == "failed"
    assert first.state_of("load_tables") == "failed"
    assert work.read_text().split("\n")[:-1] == ["extract", *TABLES[:61]]

    broken.unlink()  # the connection is back
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    work.write_text("")
    second = run_dag(DAG_ID)
    assert second.state == "success"
    assert (second.state_of("extract"), second.state_of("load_tables")) == ("skipped", "success")
    # Tables 62-100 only; publish sees what this attempt loaded.
    assert work.read_text().split("\n")[:-1] == [*TABLES[61:], "publish 39"]
    assert "[BFX_FOREACH_RESUME] skipped=61 resumed_at=61 total=100 reason=missing" in bfx_log(
        caplog
    )
    load = catalog.task_rows(DAG_ID, second.run_id)[("load_tables", -1)]
    assert (load.ExecutionStatus, load.NextLoadStatus) == ("S", "P")
