"""The recorded-run decisions of ``BfxDatabricksOperator._compute`` (decision 0061), with the
real ``DatabricksHook`` against the fake Jobs API and a handle whose checkpoints live in a dict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tests.databricks.fake_databricks import FakeDatabricks, Plan

if TYPE_CHECKING:
    from airflow_provider_bfx.operators.databricks import BfxDatabricksOperator

RUN_NODE = "databricks_run"


def _module() -> Any:
    # imported when a test runs, not at collection: see conftest.py
    from airflow_provider_bfx.operators import databricks

    return databricks


pytestmark = pytest.mark.slow  # needs the session's Airflow (the fake's connection)


@dataclass
class Handle:
    scope_key: str = "L1/P1/I-"
    execution_id: int = 7
    checkpoints: dict[str, Any] = field(default_factory=dict)

    def get_checkpoint(self, node: str, default: Any = None) -> Any:
        return self.checkpoints.get(node, default)

    def checkpoint(self, node: str, output: Any) -> None:
        self.checkpoints[node] = output


class Ti:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def operator() -> BfxDatabricksOperator:
    return _module().BfxDatabricksOperator(
        task_id="t",
        copy=None,
        job_id=42,
        polling_period_seconds=0.01,
        databricks_retry_limit=1,
    )


def compute(handle: Handle, audit_id: int = 5) -> dict[str, Any]:
    return operator()._compute({"ti": Ti()}, handle, audit_id)  # type: ignore[arg-type]


def test_recorded_success_is_not_run_again(fake_databricks: FakeDatabricks) -> None:
    handle = Handle()
    first = compute(handle)
    assert handle.checkpoints[RUN_NODE]["run_id"] == first["run_id"]
    again = compute(handle)
    assert again["run_id"] == first["run_id"]
    assert len(fake_databricks.runs_of(42)) == 1


def test_recorded_failure_is_submitted_anew(fake_databricks: FakeDatabricks) -> None:
    fake_databricks.plan(42, Plan(result="FAILED"))
    handle = Handle()
    with pytest.raises(_module().BfxDatabricksRunFailed, match="TERMINATED/FAILED"):
        compute(handle)
    second = compute(handle)
    runs = fake_databricks.runs_of(42)
    assert [r.run_id for r in runs][-1] == second["run_id"] and len(runs) == 2
    assert runs[0].body["idempotency_token"] != runs[1].body["idempotency_token"]


def test_a_run_of_another_audit_id_is_not_reused(fake_databricks: FakeDatabricks) -> None:
    handle = Handle()
    compute(handle, audit_id=5)
    compute(handle, audit_id=6)
    assert fake_databricks.audit_ids(42) == ["5", "6"]


def test_a_lost_record_gets_the_same_run_back_by_idempotency_token(
    fake_databricks: FakeDatabricks,
) -> None:
    first = compute(Handle())
    again = compute(Handle())  # submitted, but the record of the first never written
    assert again["run_id"] == first["run_id"]
    assert len(fake_databricks.runs_of(42)) == 1


def test_row_counts_shape() -> None:
    assert _module().row_counts(None) == []
    assert _module().row_counts({"rows": {"a": 3, "b": {"Insert": 1, "Update": 2}}}) == [
        ("a", "Insert", 3),
        ("b", "Insert", 1),
        ("b", "Update", 2),
    ]
    with pytest.raises(TypeError):
        _module().row_counts({"rows": [1, 2]})


def test_job_id_xor_json() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        _module().BfxDatabricksOperator(task_id="x", copy=None)
    with pytest.raises(ValueError, match="exactly one"):
        _module().BfxDatabricksOperator(task_id="x", copy=None, job_id=1, json={})


def test_the_audit_id_goes_into_every_notebook_task() -> None:
    op = _module().BfxDatabricksOperator(
        task_id="x",
        copy=None,
        json={
            "run_name": "r",
            "tasks": [
                {"task_key": "a", "notebook_task": {"notebook_path": "/a"}},
                {"task_key": "b", "notebook_task": {"base_parameters": {"k": "v"}}},
                {"task_key": "c", "spark_python_task": {"python_file": "c.py"}},
            ],
        },
    )
    body = op._request(9)
    assert body["tasks"][0]["notebook_task"]["base_parameters"] == {"audit_id": "9"}
    assert body["tasks"][1]["notebook_task"]["base_parameters"] == {"k": "v", "audit_id": "9"}
    assert "base_parameters" not in body["tasks"][2]["spark_python_task"]
    assert op.json is not None and "base_parameters" not in op.json["tasks"][0]["notebook_task"]
