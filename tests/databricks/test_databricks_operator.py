"""``BfxDatabricksOperator`` in real Airflow runs against the fake Databricks (DESIGN.md §6)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.databricks.conftest import e2e
from tests.databricks.fake_databricks import FakeDatabricks, Plan

pytestmark = pytest.mark.slow

DAG_ID = "bfx_dbx_e2e"


def copies(catalog: Any) -> list[tuple[str, str]]:
    path = Path(os.environ["BFX_EXAMPLE_COPY_DIR"]) / "copies"
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


def row_counts(catalog: Any, execution_id: int) -> list[tuple[str, str, int]]:
    engine = create_engine(catalog.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT ObjectName, CountType, RecordCount FROM ExecutionRowCount"
                    " WHERE ExecutionID = :e"
                ),
                {"e": execution_id},
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def xcom(run: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        )
    return None if value is None else XComModel.deserialize_value(_Row(value))


@dataclass
class _Row:
    value: Any


def task_row(catalog: Any, run: Any, task_id: str) -> Any:
    return catalog.task_rows(DAG_ID, run.run_id)[(task_id, -1)]


def test_success_copies_once_and_computes_under_its_own_audit_id(
    catalog: Any, fake_databricks: FakeDatabricks, caplog: pytest.LogCaptureFixture
) -> None:
    run = e2e().run_dag(DAG_ID)
    assert run.state == "success"
    assert run.state_of("load_customer") == run.state_of("load_orders") == "success"
    customer = task_row(catalog, run, "load_customer")
    orders = task_row(catalog, run, "load_orders")
    for row in (customer, orders):
        assert (row.ExecutionStatus, row.NextLoadStatus) == ("S", "P")
        assert row.AuditID == row.ExecutionID
    assert sorted(copies(catalog)) == [
        ("load_customer", str(customer.ExecutionID)),
        ("load_orders", str(orders.ExecutionID)),
    ]
    # run-now: the audit ID is a job parameter; submit: a notebook base parameter
    assert fake_databricks.audit_ids(42) == [str(customer.ExecutionID)]
    assert fake_databricks.runs_of(42)[0].body["job_parameters"]["table"] == "customer"
    assert fake_databricks.audit_ids("orders") == [str(orders.ExecutionID)]
    assert all(r.authorization == "Bearer dapi-fake-token" for r in fake_databricks.requests)
    assert all(p.startswith("/api/2.2/jobs/") for p in fake_databricks.paths())
    assert row_counts(catalog, customer.ExecutionID) == [("dw.customer", "Insert", 1200)]
    assert row_counts(catalog, orders.ExecutionID) == [("dw.orders", "Insert", 3400)]
    value = e2e().xcom_value(DAG_ID, run.run_id, "load_orders")
    assert value["run_id"] == fake_databricks.runs_of("orders")[0].run_id
    assert value["audit_id"] == orders.ExecutionID
    assert value["copy"] == {"rows": {"dw.orders": 3400}}
    assert value["run_page_url"].endswith(f"/#job/run/{value['run_id']}")
    assert xcom(run, "load_orders", "run_page_url") == value["run_page_url"]
    # the extra link, as the task runner stores it when the task finishes
    assert xcom(run, "load_orders", "_link_BfxDatabricksRunLink") == value["run_page_url"]


def orders_copies(catalog: Any) -> list[str]:
    return [audit for task, audit in copies(catalog) if task == "load_orders"]


def test_compute_failure_leaves_d_and_the_next_run_computes_only_under_the_landed_audit_id(
    catalog: Any, fake_databricks: FakeDatabricks, caplog: pytest.LogCaptureFixture
) -> None:
    fake_databricks.plan("orders", Plan(result="FAILED"))
    first = e2e().run_dag(DAG_ID)
    assert first.state == "failed"
    assert first.state_of("load_orders") == "failed"
    assert first.state_of("load_customer") == "success"
    failed = task_row(catalog, first, "load_orders")
    assert (failed.ExecutionStatus, failed.NextLoadStatus) == ("F", "D")
    landed = failed.AuditID
    assert landed == failed.ExecutionID
    assert orders_copies(catalog) == [str(landed)]

    caplog.clear()
    second = e2e().run_dag(DAG_ID)
    assert second.state == "success"
    assert second.state_of("load_orders") == "success"
    assert second.state_of("load_customer") == "skipped"  # completed in this lineage
    restarted = task_row(catalog, second, "load_orders")
    assert restarted.ExecutionStatus == "S"
    assert restarted.AuditID == landed != restarted.ExecutionID
    assert restarted.OriginalExecutionID == failed.OriginalExecutionID
    assert orders_copies(catalog) == [str(landed)]  # the copy was not called again
    assert fake_databricks.audit_ids("orders") == [str(landed), str(landed)]
    log = e2e().bfx_log(caplog)
    assert "[BFX_COMPUTE_ONLY_RESTART]" in log
    assert f"copy=skipped landed_audit_id={landed}" in log
    assert row_counts(catalog, restarted.ExecutionID) == []  # the rows were counted once
    value = e2e().xcom_value(DAG_ID, second.run_id, "load_orders")
    assert value["audit_id"] == landed
    assert value["copy"] == {"rows": {"dw.orders": 3400}}  # the landed copy's metadata


def test_two_compute_only_restarts_in_a_row_keep_the_original_audit_id(
    catalog: Any, fake_databricks: FakeDatabricks
) -> None:
    fake_databricks.plan("orders", Plan(result="FAILED"), Plan(result="FAILED"))
    first = e2e().run_dag(DAG_ID)
    landed = task_row(catalog, first, "load_orders").AuditID
    second = e2e().run_dag(DAG_ID)
    assert second.state_of("load_orders") == "failed"
    row = task_row(catalog, second, "load_orders")
    assert (row.ExecutionStatus, row.NextLoadStatus, row.AuditID) == ("F", "D", landed)
    third = e2e().run_dag(DAG_ID)
    assert third.state == "success"
    row = task_row(catalog, third, "load_orders")
    assert (row.ExecutionStatus, row.AuditID) == ("S", landed)
    assert orders_copies(catalog) == [str(landed)]
    assert fake_databricks.audit_ids("orders") == [str(landed)] * 3


def test_copy_failure_leaves_r_and_the_next_run_copies_and_computes_under_a_new_audit_id(
    catalog: Any, fake_databricks: FakeDatabricks
) -> None:
    first = e2e().run_dag(DAG_ID, conf={"fail_copy": ["load_orders"]})
    assert first.state_of("load_orders") == "failed"
    failed = task_row(catalog, first, "load_orders")
    assert (failed.ExecutionStatus, failed.NextLoadStatus) == ("F", "R")
    assert fake_databricks.runs_of("orders") == []  # no compute without landed data
    assert orders_copies(catalog) == []

    second = e2e().run_dag(DAG_ID)
    assert second.state == "success"
    row = task_row(catalog, second, "load_orders")
    assert row.ExecutionStatus == "S"
    assert row.AuditID == row.ExecutionID != failed.AuditID
    assert orders_copies(catalog) == [str(row.ExecutionID)]
    assert fake_databricks.audit_ids("orders") == [str(row.ExecutionID)]
    assert row_counts(catalog, row.ExecutionID) == [("dw.orders", "Insert", 3400)]


def test_a_retry_reattaches_to_the_run_still_running_instead_of_submitting_again(
    catalog: Any, fake_databricks: FakeDatabricks, caplog: pytest.LogCaptureFixture
) -> None:
    # The first try submits, then loses Databricks while polling (the 2nd runs/get is a 503)
    # and fails with the run still RUNNING there; Airflow's retry of the same lineage must
    # find the recorded run and poll it to its end.
    fake_databricks.plan(42, Plan(running_gets=5, outage_at=frozenset({2})))
    run = e2e().run_dag(DAG_ID)
    assert run.state == "success"
    assert run.state_of("load_customer") == "success"
    tries = sorted(
        (r for r in catalog.rows(DAG_ID, run.run_id) if r.TaskId == "load_customer"),
        key=lambda r: r.ExecutionID,
    )
    # the first try ended F/D (the batch's success has since reset every NextLoadStatus to P),
    # so the retry was a compute-only restart
    assert [r.ExecutionStatus for r in tries] == ["F", "S"]
    assert tries[-1].AuditID == tries[0].AuditID == tries[0].ExecutionID
    (only,) = fake_databricks.runs_of(42)  # no duplicate submission
    assert only.answered > 2  # polled again by the retry, to its end
    assert [t for t, _ in copies(catalog)].count("load_customer") == 1
    log = e2e().bfx_log(caplog)
    assert (
        f"[BFX_COMPUTE_ONLY_RESTART] task=load_customer execution_id={tries[1].ExecutionID}" in log
    )
    assert f"[BFX_DATABRICKS_REATTACH] run_id={only.run_id}" in log
    assert "action=reattach" in log
    assert e2e().xcom_value(DAG_ID, run.run_id, "load_customer")["run_id"] == only.run_id


def test_the_example_dag_runs_every_table_against_databricks(
    catalog: Any, fake_databricks: FakeDatabricks
) -> None:
    run = e2e().run_dag("databricks_tables")
    assert run.state == "success", run.states
    rows = catalog.task_rows("databricks_tables", run.run_id)
    assert {task for task, _ in rows} == {
        "load_dim_customer",
        "load_dim_product",
        "load_dim_store",
        "load_fact_sales",
    }
    for job_id, task in [(1101, "load_dim_customer"), (1102, "load_dim_product")]:
        assert fake_databricks.audit_ids(job_id) == [str(rows[(task, -1)].ExecutionID)]
    (sales,) = fake_databricks.runs_of(fake_databricks.runs[max(fake_databricks.runs)].key)
    assert sales.body["tasks"][0]["notebook_task"]["base_parameters"]["audit_id"] == str(
        rows[("load_fact_sales", -1)].ExecutionID
    )
    assert row_counts(catalog, rows[("load_dim_store", -1)].ExecutionID) == [
        ("landing.dim_store", "Insert", 1000)
    ]


def test_after_the_worker_is_killed_the_next_try_reattaches_to_the_running_job(
    catalog: Any,
    fake_databricks: FakeDatabricks,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A real worker death: the DAG run's process is SIGKILLed while ``load_customer`` polls a
    RUNNING job. Its row stays active with a lease nobody renews; once the lease has expired, the
    scheduler's part (the zombie try marked failed) and a cleared rerun of the same DAG run follow.
    The new try finds the stale row (-> A/D, copy landed), restarts compute only, and polls the
    recorded run to success: one submission in all, one copy."""
    import signal
    import subprocess
    import sys
    import time

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    monkeypatch.setenv("AIRFLOW__BFX__LEASE_DURATION", "2")
    fake_databricks.plan(42, Plan(running_gets=10**9))  # RUNNING until the test says otherwise
    conftest = e2e()
    logical_date = conftest.next_logical_date()
    out = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("dag_test_worker.py")),
            str(conftest.DAGS_FOLDER),
            DAG_ID,
            logical_date.isoformat(),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(r.answered >= 3 for r in fake_databricks.runs_of(42)):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never polled the job"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        out.close()
    (job,) = fake_databricks.runs_of(42)
    assert [t for t, _ in copies(catalog)].count("load_customer") == 1
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == DAG_ID,
                TaskInstance.task_id == "load_customer",
                TaskInstance.logical_date == logical_date,
            )
        )
        assert ti is not None and ti.state == TaskInstanceState.RUNNING
        run_id = ti.run_id
        ti.state = TaskInstanceState.FAILED  # what the scheduler does with a zombie try
    stale = task_row(catalog, conftest.RunResult(DAG_ID, run_id, "", {}), "load_customer")
    assert stale.ExecutionStatus == "E"  # nobody ended it: the worker died
    time.sleep(2.5)  # its lease lapses
    job.plan.running_gets = job.answered + 2  # the job finishes a little later

    caplog.clear()
    result = conftest.clear_and_resume(DAG_ID, run_id, ["load_customer"])
    assert result.state_of("load_customer") == "success"
    tries = sorted(
        (r for r in catalog.rows(DAG_ID, run_id) if r.TaskId == "load_customer"),
        key=lambda r: r.ExecutionID,
    )
    assert [r.ExecutionStatus for r in tries] == ["A", "S"]
    assert tries[1].AuditID == tries[0].AuditID == tries[0].ExecutionID
    assert fake_databricks.runs_of(42) == [job]  # no second submission
    assert [t for t, _ in copies(catalog)].count("load_customer") == 1
    log = conftest.bfx_log(caplog)
    assert "[BFX_LEASE_EXPIRED]" in log
    assert "[BFX_COMPUTE_ONLY_RESTART] task=load_customer" in log
    assert f"[BFX_DATABRICKS_REATTACH] run_id={job.run_id}" in log
