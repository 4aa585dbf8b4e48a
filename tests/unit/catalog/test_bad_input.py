"""Bad input gets a clear error and loses nothing: unknown codes in hand-edited rows."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from airflow_provider_bfx.catalog.codes import CorruptRowError
from airflow_provider_bfx.catalog.store import BatchSpec, TaskSpec
from tests.story import deployed_store, run_batch


def _table(store) -> str:  # type: ignore[no-untyped-def]
    return "Execution" if store.dialect == "sqlite" else "bfx.Execution"


def test_the_catalog_refuses_an_unknown_code(catalog_url: str) -> None:
    store = deployed_store(catalog_url)
    run_batch(store, "wh", "r1", ["a", "b"], fail={"b"})
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {_table(store)} SET NextLoadStatus = 'X' WHERE TaskId = 'b'"))


def test_a_hand_edited_unknown_code_fails_the_start_naming_the_row(sqlite_url: str) -> None:
    store = deployed_store(sqlite_url)
    run_batch(store, "wh", "r1", ["a", "b"], fail={"b"})
    (row,) = [r for r in store.executions("wh", "r1") if r.TaskId == "b"]
    with store.engine.begin() as conn:  # a DBA bypassing the CHECK constraint
        conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        conn.execute(
            text(f"UPDATE Execution SET NextLoadStatus = 'X' WHERE ExecutionID = {row.ExecutionID}")
        )
        conn.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")
    before = [tuple(r) for r in store.executions("wh")]
    with pytest.raises(CorruptRowError) as raised:
        store.start_task(TaskSpec(BatchSpec("wh", "r2"), "b"))
    message = str(raised.value)
    assert f"Execution row ExecutionID={row.ExecutionID} has NextLoadStatus='X'" in message
    assert "known: P, C, R, D" in message and "bfx reset" in message
    # Nothing half-written: the failed start left no new batch or task row.
    assert [tuple(r) for r in store.executions("wh")] == before
