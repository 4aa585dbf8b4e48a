"""Nested batches (DESIGN.md §5, decision 0070): a DAG run triggered by a routed task is a child
batch of that task's execution, and a resumed parent resumes its children instead of rerunning
them.

End to end: ``bfx_nested_parent`` triggers ``bfx_nested_child_ok`` and ``bfx_nested_child_bad``
with real ``TriggerDagRunOperator`` tasks that wait for the child runs. ``dag.test()`` runs the
parent in this process; the triggered runs stay queued in the metadata database until
``nested_runner.py``, a process of its own (started per test, killed by pid at its end), picks
them up and runs them, while the parent's trigger task polls their state as it would under a
scheduler.

Store level: the same story on the catalog alone, plus what the end-to-end story does not
reach (a fresh parent lineage, another trigger of the same child DAG in between, a parent id
that names no task execution).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (  # type: ignore[import-not-found]  # tests/e2e on sys.path (pytest)
    DAGS_FOLDER,
    REPO,
    Catalog,
    RunResult,
    bfx_log,
    run_dag,
)

from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import (
    BatchSpec,
    CatalogStateError,
    CatalogStore,
    TaskSpec,
    TaskStarted,
)
from tests.story import deployed_store

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).resolve().with_name("nested_runner.py")
PARENT = "bfx_nested_parent"
CHILD_OK = "bfx_nested_child_ok"
CHILD_BAD = "bfx_nested_child_bad"
RUNNER_SECONDS = 240  # the child runner's own deadline; each test takes well under a minute


@pytest.fixture
def child_runner(catalog: Catalog, tmp_path: Path) -> Iterator[Path]:
    """The process that runs the triggered child runs; yields its log (its stdout). Stopped
    through a stop file, else by its pid (never by name)."""
    log = tmp_path / "nested_runner.log"
    stop = tmp_path / "nested_runner.stop"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(RUNNER),
                str(DAGS_FOLDER),
                str(RUNNER_SECONDS),
                str(stop),
                CHILD_OK,
                CHILD_BAD,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),  # AIRFLOW_HOME, the metadata DB, this test's catalog
            cwd=REPO,
        )
    try:
        yield log
    finally:
        stop.touch()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def child_runs(dag_id: str, ignore: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(run_id, state, conf) of the runs of ``dag_id`` in the metadata database, oldest first,
    but those in ``ignore`` (earlier tests': the metadata database lives for the session)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id))
        return [
            (r.run_id, str(getattr(r.state, "value", r.state)), dict(r.conf or {}))
            for r in runs
            if r.run_id not in ignore
        ]


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        )
        return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}


def ran(copies_dir: Path) -> list[str]:
    path = copies_dir / "executions"
    return path.read_text().splitlines() if path.exists() else []


def batches(catalog: Catalog, dag_id: str) -> list[Any]:
    return sorted(
        (r for r in catalog.rows(dag_id) if r.TaskId is None), key=lambda r: r.ExecutionID
    )


def failed_parent_run(catalog: Catalog, copies_dir: Path) -> RunResult:
    """Run 1: child_ok succeeds, child_bad fails at its second task, so the parent fails."""
    (copies_dir / "child_bad_broken").write_text("second fails while this file exists\n")
    run1 = run_dag(PARENT)
    assert run1.state == "failed"
    assert run1.state_of("trigger_child_ok") == "success"
    assert run1.state_of("trigger_child_bad") == "failed"
    assert run1.state_of("report") == "upstream_failed"
    return run1


def test_a_resumed_parent_skips_the_finished_child_and_resumes_the_failed_one(
    catalog: Catalog,
    copies_dir: Path,
    child_runner: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    earlier = {
        dag_id: {r[0] for r in child_runs(dag_id, set())} for dag_id in (CHILD_OK, CHILD_BAD)
    }
    run1 = failed_parent_run(catalog, copies_dir)
    parent1 = catalog.task_rows(PARENT, run1.run_id)
    trigger_ok1 = parent1[("trigger_child_ok", -1)]
    trigger_bad1 = parent1[("trigger_child_bad", -1)]

    # Each triggered run carries the user's conf plus the triggering execution.
    ((ok_run1, ok_state1, ok_conf1),) = child_runs(CHILD_OK, earlier[CHILD_OK])
    ((bad_run1, bad_state1, bad_conf1),) = child_runs(CHILD_BAD, earlier[CHILD_BAD])
    assert (ok_state1, bad_state1) == ("success", "failed")
    assert ok_conf1 == {
        "source": PARENT,
        "child": "child_ok",
        "bfx": {"parent_execution_id": trigger_ok1.ExecutionID},
    }
    assert bad_conf1["bfx"] == {"parent_execution_id": trigger_bad1.ExecutionID}
    assert task_states(CHILD_BAD, bad_run1) == {
        "first": "success",
        "second": "failed",
        "third": "upstream_failed",
    }

    # The child batches hang under the executions that triggered them.
    (ok_batch,) = batches(catalog, CHILD_OK)
    (bad_batch1,) = batches(catalog, CHILD_BAD)
    assert ok_batch.RunId == ok_run1
    assert ok_batch.ParentExecutionID == trigger_ok1.ExecutionID
    assert (ok_batch.ExecutionStatus, ok_batch.NextLoadStatus) == ("S", "P")
    assert bad_batch1.RunId == bad_run1
    assert bad_batch1.ParentExecutionID == trigger_bad1.ExecutionID
    assert (bad_batch1.ExecutionStatus, bad_batch1.NextLoadStatus) == ("F", "R")
    bad1 = catalog.task_rows(CHILD_BAD, bad_run1)
    assert (bad1[("first", -1)].ExecutionStatus, bad1[("second", -1)].ExecutionStatus) == (
        "S",
        "F",
    )
    assert (trigger_bad1.ExecutionStatus, trigger_bad1.NextLoadStatus) == ("F", "R")
    runner_log = child_runner.read_text()
    assert (
        f"[bfx] nested batch dag={CHILD_BAD} batch_execution_id={bad_batch1.ExecutionID}"
        f" parent_execution_id={trigger_bad1.ExecutionID} parent_dag={PARENT}"
        " parent_task=trigger_child_bad" in runner_log
    )
    assert "lineage=fresh" in runner_log
    assert sorted(ran(copies_dir)) == [
        "child_bad:first:bfx_nested_parent",
        "child_ok:extract:bfx_nested_parent",
        "child_ok:load:bfx_nested_parent",
    ]
    caplog.clear()
    done_before = len(runner_log)

    # The cause is fixed; the parent's next run resumes its lineage.
    (copies_dir / "child_bad_broken").unlink()
    run2 = run_dag(PARENT)
    assert run2.state == "success"
    assert run2.state_of("trigger_child_ok") == "skipped"  # completed: child_ok not triggered
    assert run2.state_of("trigger_child_bad") == "success"
    assert run2.state_of("report") == "success"
    log = bfx_log(caplog)
    assert f"[BFX_BATCH_RESUME] dag={PARENT}" in log
    assert f"[BFX_SKIP_COMPLETED] dag={PARENT} task=trigger_child_ok" in log
    assert f"[BFX_RETRY] dag={PARENT} task=trigger_child_bad" in log

    parent2 = catalog.task_rows(PARENT, run2.run_id)
    assert parent2[("trigger_child_ok", -1)].ExecutionStatus == "C"
    trigger_bad2 = parent2[("trigger_child_bad", -1)]
    assert trigger_bad2.ExecutionStatus == "S"
    assert trigger_bad2.OriginalExecutionID == trigger_bad1.ExecutionID  # same parent lineage

    # child_ok: not triggered again, no new batch.
    assert [r[0] for r in child_runs(CHILD_OK, earlier[CHILD_OK])] == [ok_run1]
    assert len(batches(catalog, CHILD_OK)) == 1

    # child_bad: triggered again by the retried trigger task; its batch resumes its lineage.
    runs_bad = child_runs(CHILD_BAD, earlier[CHILD_BAD])
    assert len(runs_bad) == 2
    bad_run2, bad_state2, bad_conf2 = runs_bad[1]
    assert bad_state2 == "success"
    assert bad_conf2["bfx"] == {"parent_execution_id": trigger_bad2.ExecutionID}
    assert task_states(CHILD_BAD, bad_run2) == {
        "first": "skipped",  # finished in the failed child run: not run again
        "second": "success",
        "third": "success",
    }
    _, bad_batch2 = batches(catalog, CHILD_BAD)
    assert bad_batch2.RunId == bad_run2
    assert bad_batch2.ParentExecutionID == trigger_bad2.ExecutionID
    assert bad_batch2.OriginalExecutionID == bad_batch1.ExecutionID
    assert bad_batch2.LineageID == bad_batch1.LineageID
    assert bad_batch2.AttemptNumber == 2
    assert (bad_batch2.ExecutionStatus, bad_batch2.NextLoadStatus) == ("S", "P")
    bad2 = catalog.task_rows(CHILD_BAD, bad_run2)
    assert bad2[("first", -1)].ExecutionStatus == "C"
    assert bad2[("first", -1)].OriginalExecutionID == bad1[("first", -1)].ExecutionID
    assert bad2[("second", -1)].ExecutionStatus == "S"
    assert bad2[("second", -1)].OriginalExecutionID == bad1[("second", -1)].ExecutionID
    assert bad2[("second", -1)].AttemptNumber == 2
    assert bad2[("third", -1)].ExecutionStatus == "S"

    runner_log = child_runner.read_text()[done_before:]
    assert (
        f"[BFX_BATCH_RESUME] dag={CHILD_BAD} batch_execution_id={bad_batch2.ExecutionID}"
        f" original_execution_id={bad_batch1.ExecutionID}"
        f" previous_execution_id={bad_batch1.ExecutionID} attempt=2"
        f" parent_execution_id={trigger_bad2.ExecutionID}" in runner_log
    )
    assert f"parent_execution_id={trigger_bad2.ExecutionID}" in runner_log
    assert "lineage=resume" in runner_log
    assert f"[BFX_SKIP_COMPLETED] dag={CHILD_BAD} task=first" in runner_log
    assert f"[BFX_RETRY] dag={CHILD_BAD} task=second" in runner_log

    # Every task body ran exactly once over both parent runs.
    assert sorted(ran(copies_dir)) == sorted(
        [
            "child_bad:first:bfx_nested_parent",
            "child_ok:extract:bfx_nested_parent",
            "child_ok:load:bfx_nested_parent",
            "child_bad:second:bfx_nested_parent",
            "child_bad:third:bfx_nested_parent",
            "parent:report",
        ]
    )


def test_a_run_whose_conf_names_a_malformed_parent_fails_before_any_work(
    catalog: Catalog, copies_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = run_dag(CHILD_OK, conf={"bfx": {"parent_execution_id": "42; DROP TABLE"}})
    assert run.state == "failed"
    assert run.state_of("extract") == "failed"
    assert run.state_of("load") == "upstream_failed"
    assert ran(copies_dir) == []  # the task's own code never ran
    assert catalog.rows(CHILD_OK) == []  # no batch row, no task row
    out, err = capfd.readouterr()  # the task's failure, as the task runner logs it
    assert "bfx.parent_execution_id='42; DROP TABLE' is not an ExecutionID" in out + err


# -- store level --------------------------------------------------------------------------------


def _run(
    store: CatalogStore, batch: BatchSpec, tasks: list[str], fail: str | None = None
) -> dict[str, TaskStarted]:
    """Start and end ``tasks`` in order; ``fail`` fails finally and stops the run there."""
    started: dict[str, TaskStarted] = {}
    for task_id in tasks:
        s = started[task_id] = store.start_task(TaskSpec(batch, task_id))
        if s.run is not Run.RUN:
            continue
        if task_id == fail:
            store.end_task(s.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
            store.end_batch(batch.dag_id, batch.run_id, succeeded=False)
            return started
        store.end_task(s.execution_id, TaskOutcome.SUCCESS)
    store.end_batch(batch.dag_id, batch.run_id, succeeded=True)
    return started


def _batch(store: CatalogStore, dag_id: str, run_id: str) -> Any:
    (row,) = [r for r in store.executions(dag_id, run_id) if r.TaskId is None]
    return row


def _trigger(store: CatalogStore, parent_run: str, task_id: str, **kw: Any) -> TaskStarted:
    started = store.start_task(TaskSpec(BatchSpec("parent", parent_run, **kw), task_id))
    assert started.run is Run.RUN
    return started


@pytest.fixture
def store(catalog_url: str, caplog: pytest.LogCaptureFixture) -> Iterator[CatalogStore]:
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    found = deployed_store(catalog_url)
    try:
        yield found
    finally:
        found.engine.dispose()


def test_store_child_resumes_only_under_the_same_parent_task_lineage(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = ["first", "second", "third"]
    t1 = _trigger(store, "p1", "trigger_child")
    _run(store, BatchSpec("child", "c1", parent_execution_id=t1.execution_id), tasks, "second")
    c1 = _batch(store, "child", "c1")
    assert c1.ParentExecutionID == t1.execution_id
    store.end_task(t1.execution_id, TaskOutcome.FINAL_FAILURE, error_message="child failed")
    store.end_batch("parent", "p1", succeeded=False)

    # Another task of the resumed parent triggers the same child DAG first: that run is not of
    # the failed child's parent lineage (fresh), and it does not hide the failed one.
    other = _trigger(store, "p2", "trigger_other")
    _run(store, BatchSpec("child", "c_other", parent_execution_id=other.execution_id), ["first"])
    c_other = _batch(store, "child", "c_other")
    assert c_other.OriginalExecutionID == c_other.ExecutionID  # fresh
    assert c_other.AttemptNumber == 1

    # The retried trigger task (same parent lineage) triggers the child again: it resumes.
    caplog.clear()
    t2 = _trigger(store, "p2", "trigger_child")
    assert t2.original_execution_id == t1.execution_id
    started = _run(store, BatchSpec("child", "c2", parent_execution_id=t2.execution_id), tasks)
    c2 = _batch(store, "child", "c2")
    assert c2.ParentExecutionID == t2.execution_id
    assert (c2.OriginalExecutionID, c2.LineageID, c2.AttemptNumber) == (
        c1.ExecutionID,
        c1.ExecutionID,
        2,
    )
    assert [started[t].run for t in tasks] == [Run.SKIP, Run.RUN, Run.RUN]
    assert started["second"].status.value == "R"
    assert (
        f"[BFX_BATCH_RESUME] dag=child batch_execution_id={c2.ExecutionID}"
        f" original_execution_id={c1.ExecutionID} previous_execution_id={c1.ExecutionID}"
        f" attempt=2 parent_execution_id={t2.execution_id}" in caplog.text
    )
    assert (
        f"[bfx] nested batch dag=child batch_execution_id={c2.ExecutionID}"
        f" parent_execution_id={t2.execution_id} parent_dag=parent parent_task=trigger_child"
        f" parent_lineage={t1.execution_id} lineage=resume" in caplog.text
    )


def test_store_child_of_a_fresh_parent_lineage_starts_fresh(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = ["first", "second"]
    t1 = _trigger(store, "p1", "trigger_child")
    _run(store, BatchSpec("child", "c1", parent_execution_id=t1.execution_id), tasks, "second")
    store.end_task(t1.execution_id, TaskOutcome.FINAL_FAILURE, error_message="child failed")
    store.end_batch("parent", "p1", succeeded=False)

    # The parent's next run asks for a full rerun: a fresh parent lineage, so a fresh child.
    caplog.clear()
    t2 = _trigger(store, "p2", "trigger_child", full_rerun=True)
    assert t2.original_execution_id == t2.execution_id
    started = _run(store, BatchSpec("child", "c2", parent_execution_id=t2.execution_id), tasks)
    c2 = _batch(store, "child", "c2")
    assert c2.OriginalExecutionID == c2.ExecutionID
    assert c2.AttemptNumber == 1
    assert [started[t].run for t in tasks] == [Run.RUN, Run.RUN]  # first runs again
    assert "[BFX_BATCH_RESUME] dag=child" not in caplog.text
    assert (
        "lineage=fresh"
        ' reason="nested: the failed batch was not triggered from this parent lineage"'
        in caplog.text
    )


@pytest.mark.parametrize("parent", ["unknown", "batch"])
def test_store_parent_id_naming_no_task_execution_is_an_error(
    store: CatalogStore, parent: str
) -> None:
    t1 = _trigger(store, "p1", "trigger_child")
    parent_id = t1.execution_id + 1000 if parent == "unknown" else t1.batch_execution_id
    spec = TaskSpec(BatchSpec("child", "c1", parent_execution_id=parent_id), "first")
    with pytest.raises(CatalogStateError) as raised:
        store.start_task(spec)
    message = str(raised.value)
    assert f"parent_execution_id={parent_id}" in message
    assert f"ExecutionID={parent_id}" in message
    assert ("does not exist" if parent == "unknown" else "is a batch execution") in message
    assert "remove bfx.parent_execution_id" in message
    assert list(store.executions("child")) == []  # nothing written
