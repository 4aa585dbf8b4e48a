"""``bfx resume`` / ``POST dags/{dag_id}/resume``: the catalog's refusals, before Airflow is
asked to clear anything. (The clear itself, in a real deployment:
``tests/deployment/test_story_deployment.py::test_resume_in_place_reruns_only_the_failed_tasks``.)
"""

from __future__ import annotations

import pytest

from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.resume_in_place import ResumeRefused, resume_failed_run
from tests.story import deployed_store, run_batch


def _failed_run(store: CatalogStore, dag_id: str, run_id: str) -> None:
    batch = BatchSpec(dag_id, run_id)
    ok = store.start_task(TaskSpec(batch, "extract"))
    store.end_task(ok.execution_id, TaskOutcome.SUCCESS)
    bad = store.start_task(TaskSpec(batch, "load"))
    store.end_task(bad.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch(dag_id, run_id, succeeded=False)


def test_a_dag_the_catalog_never_saw_has_nothing_to_resume(sqlite_url: str) -> None:
    with pytest.raises(ResumeRefused, match="has no batch in the catalog") as caught:
        resume_failed_run(deployed_store(sqlite_url), "never_ran", dry_run=True)
    assert caught.value.not_found


def test_a_succeeded_latest_batch_is_not_resumed(sqlite_url: str) -> None:
    store = deployed_store(sqlite_url)
    _failed_run(store, "wh", "run_1")
    run_batch(store, "wh", "run_2", ["extract", "load"])  # a new run resumed and succeeded
    with pytest.raises(ResumeRefused, match=r"ExecutionStatus S, not F: nothing to resume"):
        resume_failed_run(store, "wh")


def test_only_the_latest_batch_resumes_in_place(sqlite_url: str) -> None:
    """Clearing an older failed run while a newer batch holds the lineage would let two
    batches claim it: refused, with what to do instead."""
    store = deployed_store(sqlite_url)
    _failed_run(store, "wh", "run_1")
    _failed_run(store, "wh", "run_2")
    with pytest.raises(ResumeRefused, match="not the latest batch") as caught:
        resume_failed_run(store, "wh", "run_1")
    assert "the latest is run 'run_2'" in str(caught.value)
    assert "trigger a new run" in str(caught.value)
    assert not caught.value.not_found


def test_an_open_batch_is_not_resumed(sqlite_url: str) -> None:
    store = deployed_store(sqlite_url)
    store.start_task(TaskSpec(BatchSpec("wh", "run_1"), "extract"))
    with pytest.raises(ResumeRefused, match="still open"):
        resume_failed_run(store, "wh")
