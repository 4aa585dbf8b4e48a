"""The gate's hint to the store that a start is not a first start in its lineage
(``TaskSpec.read_first``, decision 0121): it changes what the start costs, never what it
decides, so it is checked here where it is computed; the store's side is in
``tests/unit/catalog/test_pipeline.py`` (round trips on the wire)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_bfx.catalog.codes import VersionMismatchPolicy
from airflow_provider_bfx.routing.request import started_before, task_spec


def _context(upstream: set[str], **extra: Any) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="d",
        run_id="r",
        task_id="t",
        map_index=-1,
        try_number=1,
        task=SimpleNamespace(upstream_task_ids=upstream),
        _ti_context_from_server=SimpleNamespace(next_method=extra.pop("next_method", None)),
    )
    return {"ti": ti, "logical_date": None, **extra}


def _spec(context: dict[str, Any]) -> Any:
    settings = SimpleNamespace(
        resume_scope="lineage",
        dag_retry_limit=None,
        retry_limit=3,
        max_resume_age=None,
        version_mismatch_policy=VersionMismatchPolicy.WARN,
        lease_duration=60.0,
    )
    facts = SimpleNamespace(operator_fingerprint="f" * 64, decides_shape=False)
    run_conf = SimpleNamespace(full_rerun=False, parent_execution_id=None)
    return task_spec(context, None, facts, settings, run_conf)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("upstream", "extra", "read_first"),
    [
        pytest.param({"extract"}, {}, False, id="a task with an upstream: may be a first start"),
        pytest.param(set(), {}, True, id="no upstream: may create the run's batch"),
        pytest.param({"extract"}, {"task_reschedule_count": 2}, True, id="a later poke"),
        pytest.param({"extract"}, {"next_method": "execute_complete"}, True, id="resumed"),
    ],
)
def test_read_first(upstream: set[str], extra: dict[str, Any], read_first: bool) -> None:
    assert _spec(_context(upstream, **extra)).read_first is read_first


def test_started_before_reads_nothing_it_cannot_find() -> None:
    """A context without the Task SDK's private server context (another Airflow version, a
    test harness) is a first process of its try."""
    assert started_before({"ti": object()}) is False
    assert started_before({}) is False
