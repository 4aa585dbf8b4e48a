"""Skip ahead (decision 0106): the first start of a resumed run writes the completed tasks'
``C`` rows before they start, exactly as their own gates would have, on real SQLite and
PostgreSQL catalogs. The deployment test proves what Airflow does with them."""

from __future__ import annotations

from airflow_provider_bfx.catalog.checkpoints import RETURN_VALUE_NODE
from airflow_provider_bfx.catalog.codes import ExecutionStatus as St
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.payload import UNRECORDED
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from tests.story import deployed_store


def _done(store: CatalogStore, spec: TaskSpec, output: object = None) -> int:
    started = store.start_task(spec)
    if output is not None:
        store.write_checkpoint(
            execution_id=started.execution_id,
            scope_key=started.scope_key,
            node=RETURN_VALUE_NODE,
            payload=output,
        )
    store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    return started.execution_id


def _failed_first_run(store: CatalogStore) -> dict[str, int]:
    b1 = BatchSpec("wh", "run_1")
    ids = {
        "a": _done(store, TaskSpec(b1, "a"), {"rows": 3}),
        "b": _done(store, TaskSpec(b1, "b")),
        "d": _done(store, TaskSpec(b1, "d"), UNRECORDED),
    }
    c = store.start_task(TaskSpec(b1, "c"))
    store.end_task(c.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch("wh", "run_1", succeeded=False)
    return ids


def test_the_first_start_of_a_resumed_run_skips_the_completed_tasks_ahead(
    catalog_url: str,
) -> None:
    store = deployed_store(catalog_url)
    first = _failed_first_run(store)
    b2 = BatchSpec("wh", "run_2")
    started = store.start_task(TaskSpec(b2, "c"))
    assert started.run is Run.RUN and started.resumed_batch
    assert not store.start_task(TaskSpec(b2, "x")).resumed_batch  # the batch exists now

    others = [TaskSpec(b2, t, try_number=0) for t in ("a", "b", "d", "e", "x")]
    skipped = store.skip_ahead(b2, others)
    # d's output was not JSON: it runs again for it (0091); e never completed; x has a row.
    assert [(s.task_id, s.has_output, s.output) for s in skipped] == [
        ("a", True, {"rows": 3}),
        ("b", False, None),
    ]
    assert all(s.line.startswith("[BFX_SKIP_COMPLETED] dag=wh task=") for s in skipped)
    assert f"execution_id={skipped[0].execution_id}" in skipped[0].line

    rows = {r.task_id: r for r in store.latest_task_records("wh", "run_2", {"a", "b", "d", "e"})}
    assert set(rows) == {"a", "b"}
    for task in ("a", "b"):
        # A gate skip: C, no lease (the upstream check reads it as "already completed"),
        # standing for the run_1 row it reuses.
        row = rows[task]
        assert (row.status_code, row.lease_owner) == (St.SKIPPED.value, None)
        assert row.original_execution_id == first[task]
    # Idempotent: a second skip ahead (another first task of the run) writes nothing.
    assert store.skip_ahead(b2, others) == []
    # A task skipped ahead that starts anyway (Airflow scheduled it meanwhile) skips, and its
    # try stands for the row written ahead: decided once, one row.
    again = store.start_task(TaskSpec(b2, "a", try_number=1))
    assert (again.run, again.execution_id) == (Run.SKIP, skipped[0].execution_id)
    assert [r.TaskId for r in store.executions("wh", "run_2")].count("a") == 1
    assert store.start_task(TaskSpec(b2, "d", try_number=1)).run is Run.SKIP  # and reruns


def test_a_fresh_run_is_not_a_resumed_batch(catalog_url: str) -> None:
    store = deployed_store(catalog_url)
    b1 = BatchSpec("wh", "run_1")
    _done(store, TaskSpec(b1, "a"))
    store.end_batch("wh", "run_1", succeeded=True)
    started = store.start_task(TaskSpec(BatchSpec("wh", "run_2"), "a"))
    assert started.run is Run.RUN and not started.resumed_batch
    assert (
        store.skip_ahead(BatchSpec("wh", "run_3"), [TaskSpec(BatchSpec("wh", "run_3"), "a")]) == []
    )
