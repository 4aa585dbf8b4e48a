"""``context["bfx"]`` / a ``bfx`` argument: the execution handle, and its renewed lease."""

from __future__ import annotations

import pytest
from conftest import Catalog, run_dag, xcom_value
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_handle"


@pytest.mark.parametrize("catalog", ["sqlite"], indirect=True)  # lease renewal: engine-neutral
def test_task_argument_bfx_is_the_handle_and_its_lease_outlives_lease_duration(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__LEASE_DURATION", "3")  # renewed every second
    monkeypatch.setenv("BFX_E2E_SLEEP", "5")  # longer than the lease: only renewals keep it
    run = run_dag(DAG_ID)
    assert run.state == "success"
    seen = xcom_value(DAG_ID, run.run_id, "long_running")
    row = catalog.task_rows(DAG_ID, run.run_id)[("long_running", -1)]
    assert seen["expired"] == []  # the expiry scan found nothing lapsed: it was renewed
    assert (row.ExecutionStatus, row.NextLoadStatus) == ("S", "P")
    assert seen["execution_id"] == row.ExecutionID
    assert seen["batch_execution_id"] == row.ParentExecutionID
    assert seen["status"] == "E"
    assert seen["audit_id"] == row.ExecutionID
    assert seen["checkpoint"] == {"seen": row.ExecutionID}
    engine = create_engine(catalog.url)
    try:
        with engine.connect() as conn:
            counts = conn.execute(
                text(
                    "SELECT ObjectName, CountType, RecordCount FROM ExecutionRowCount"
                    " WHERE ExecutionID = :e"
                ),
                {"e": row.ExecutionID},
            ).all()
    finally:
        engine.dispose()
    assert [tuple(c) for c in counts] == [("staging.orders", "inserted", 42)]
