"""The 50-table story, in real Airflow runs of ``example_dags/warehouse_batch.py``.

Run 1 fails at table 48. Run 2 resumes: the 47 loaded tables end *skipped* without copying
again, table 48 is retried, tables 49 and 50 load for the first time, and ``merge`` sees all 50
outputs (47 of them replayed from the catalog). Run 3, after a successful run, starts fresh.
Every assertion reads Airflow's metadata database and the catalog rows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import Catalog, RunResult, bfx_log, run_dag, xcom_value
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow

DAG_ID = "warehouse_batch"
TABLES = [f"table_{n:02d}" for n in range(1, 51)]
LOADS = [f"load_{t}" for t in TABLES]
ALL_ROWS = sum(1000 + n for n in range(1, 51))


def copies(folder: Path) -> Counter[str]:
    """How many times each table was really copied (one line per copy)."""
    return Counter({f.stem: len(f.read_text().splitlines()) for f in folder.glob("*.copies")})


def airflow_states(run: RunResult, task_ids: list[str]) -> Counter[str]:
    return Counter(run.state_of(t) for t in task_ids)


def error_rows(catalog: Catalog, execution_id: int) -> list[tuple[str, str]]:
    prefix = "bfx." if catalog.kind == "postgresql" else ""
    engine = create_engine(catalog.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT ErrorType, ErrorMessage FROM {prefix}ExecutionError"
                    " WHERE ExecutionID = :e"
                ),
                {"e": execution_id},
            ).all()
    finally:
        engine.dispose()
    return [(r[0], r[1]) for r in rows]


def test_failed_batch_resumes_at_table_48_and_the_next_run_starts_fresh(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # -- run 1: table 48 fails ------------------------------------------------------------
    run1 = run_dag(DAG_ID, {"fail_tables": ["load_table_48"]})
    assert run1.state == "failed"
    assert airflow_states(run1, LOADS[:47]) == {"success": 47}
    assert run1.state_of("load_table_48") == "failed"
    assert airflow_states(run1, [*LOADS[48:], "merge", "publish"]) == {"upstream_failed": 4}

    batch1 = catalog.batch_row(DAG_ID, run1.run_id)
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")
    assert batch1.EndTime is not None  # closed by the DAG-run listener
    rows1 = catalog.task_rows(DAG_ID, run1.run_id)
    assert set(rows1) == {(t, -1) for t in LOADS[:48]}  # 49, 50 never started
    assert Counter((r.ExecutionStatus, r.NextLoadStatus) for r in rows1.values()) == {
        ("S", "C"): 47,
        ("F", "R"): 1,
    }
    failed = rows1[("load_table_48", -1)]
    assert (failed.ExecutionStatus, failed.NextLoadStatus) == ("F", "R")
    ((error_type, message),) = error_rows(catalog, failed.ExecutionID)
    assert error_type == "builtins.RuntimeError"
    assert "table_48: injected failure" in message
    assert copies(copies_dir) == {t: 1 for t in TABLES[:47]}
    caplog.clear()

    # -- run 2: resume -----------------------------------------------------------------------
    run2 = run_dag(DAG_ID)
    out = bfx_log(caplog)
    assert run2.state == "success"
    assert airflow_states(run2, LOADS[:47]) == {"skipped": 47}
    assert airflow_states(run2, [*LOADS[47:], "merge", "publish"]) == {"success": 5}

    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.OriginalExecutionID == batch1.ExecutionID  # run 1's lineage
    assert batch2.LineageID == batch1.ExecutionID
    assert batch2.AttemptNumber == 2
    assert (batch2.ExecutionStatus, batch2.NextLoadStatus) == ("S", "P")  # closed: succeeded
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    for n, load in enumerate(LOADS[:47]):
        row = rows2[(load, -1)]
        assert row.ExecutionStatus == "C", load
        assert row.OriginalExecutionID == rows1[(load, -1)].ExecutionID, load
        assert row.AuditID == rows1[(load, -1)].ExecutionID, load
        assert row.AttemptNumber == 2, n
    # Skip ahead (decision 0106): the five first loads were queued together and decided for
    # themselves (try 1); the first of them wrote the other 42 completed loads' rows before
    # they were scheduled (try 0, no lease) and Airflow skipped them without running them.
    first_loads = set(LOADS[0:50:10])
    ahead = {load for load in LOADS[:47] if rows2[(load, -1)].TryNumber == 0}
    assert ahead == set(LOADS[:47]) - first_loads
    assert {rows2[(load, -1)].TryNumber for load in first_loads} == {1}
    assert all(rows2[(load, -1)].LeaseOwner is None for load in ahead)
    assert "bfx: skipped ahead 42 completed tasks of this resumed run" in out
    retried = rows2[("load_table_48", -1)]
    assert retried.ExecutionStatus == "S"
    assert retried.OriginalExecutionID == failed.ExecutionID
    assert retried.AttemptNumber == 2
    for load in [*LOADS[48:], "merge", "publish"]:
        assert rows2[(load, -1)].ExecutionStatus == "S", load
        assert rows2[(load, -1)].AttemptNumber == 1, load
    # the lineage is closed: nothing waits for a restart any more
    assert {r.NextLoadStatus for r in catalog.rows(DAG_ID)} == {"P"}

    # nothing that was loaded was copied again; 48, 49, 50 were copied once
    assert copies(copies_dir) == {t: 1 for t in TABLES}
    # merge saw all 50 outputs: 47 replayed from the catalog, 3 fresh
    assert xcom_value(DAG_ID, run2.run_id, "merge") == {"tables": 50, "rows": ALL_ROWS}
    assert xcom_value(DAG_ID, run2.run_id, "publish") == f"published 50 tables, {ALL_ROWS} rows"

    # the decisions are grep-able log lines
    assert (
        f"[BFX_BATCH_RESUME] dag={DAG_ID} batch_execution_id={batch2.ExecutionID}"
        f" original_execution_id={batch1.ExecutionID}"
    ) in out
    skip_lines = [line for line in out.splitlines() if "[BFX_SKIP_COMPLETED]" in line]
    skipped_tasks = {
        part.split("=", 1)[1]
        for line in skip_lines
        for part in line.split()
        if part.startswith("task=")
    }
    assert skipped_tasks == set(LOADS[:47])
    assert f"[BFX_RETRY] dag={DAG_ID} task=load_table_48" in out
    assert f"original_execution_id={failed.ExecutionID}" in out

    # -- run 3: after a success, a fresh lineage --------------------------------------------
    run3 = run_dag(DAG_ID)
    assert run3.state == "success"
    assert airflow_states(run3, [*LOADS, "merge", "publish"]) == {"success": 52}
    batch3 = catalog.batch_row(DAG_ID, run3.run_id)
    assert batch3.OriginalExecutionID == batch3.ExecutionID
    assert batch3.AttemptNumber == 1
    rows3 = catalog.task_rows(DAG_ID, run3.run_id)
    assert {r.ExecutionStatus for r in rows3.values()} == {"S"}
    assert {r.AttemptNumber for r in rows3.values()} == {1}
    assert copies(copies_dir) == {t: 2 for t in TABLES}


@pytest.mark.parametrize("catalog", ["sqlite"], indirect=True)  # batch start is engine-neutral
def test_full_rerun_request_reloads_every_table_in_a_fresh_lineage(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run1 = run_dag(DAG_ID, {"fail_tables": ["load_table_48"]})
    assert run1.state == "failed"
    batch1 = catalog.batch_row(DAG_ID, run1.run_id)
    caplog.clear()

    run2 = run_dag(DAG_ID, {"bfx": {"mode": "full"}})
    out = bfx_log(caplog)
    assert run2.state == "success"
    assert airflow_states(run2, [*LOADS, "merge", "publish"]) == {"success": 52}
    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.OriginalExecutionID == batch2.ExecutionID != batch1.ExecutionID
    assert batch2.AttemptNumber == 1
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    assert {(r.ExecutionStatus, r.AttemptNumber) for r in rows2.values()} == {("S", 1)}
    assert copies(copies_dir) == {**{t: 2 for t in TABLES[:47]}, **{t: 1 for t in TABLES[47:]}}
    assert "[BFX_SKIP_COMPLETED]" not in out
    assert "[BFX_BATCH_RESUME]" not in out
