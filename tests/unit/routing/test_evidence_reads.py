"""What a task start asks Airflow about earlier runs (DESIGN.md §4 "Airflow's outcome is
evidence"; issue 12).

The first start of a resumed run (the one that creates its batch and chooses the lineage) reads
the failed run's whole record: the DAG run's state and every task's state. Every later start
of that run asks only for its own task's instances, in one call for all runs awaiting
evidence: its own rows are all its decision reads of them. Before, each of them asked both
questions for the whole run and locked the failed batch to compare them, ~0.15-0.3 s of every
resumed run's task on a busy 2-core deployment.

Real SQLite catalog, real rows. The task instance is a stand-in answering ``get_task_states``
and ``get_dagrun_state`` from dicts (Airflow's record, hand-made marks included) and recording
each question; the deployment tests prove the same evidence end to end
(``tests/deployment/test_drift_deployment.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, RunEvidence, TaskSpec
from airflow_provider_bfx.catalog.txn import utcnow
from airflow_provider_bfx.routing.evidence import adopt_airflow_outcomes
from tests.story import batch_row, deployed_store

DAG_ID = "evidence_reads"
TASKS = ("a", "b", "c")


class AirflowRecord:
    """A task instance's view of Airflow's record: run states and task states by run."""

    def __init__(self, runs: dict[str, str], tasks: dict[str, dict[str, str]]) -> None:
        self.runs = runs
        self.tasks = tasks
        self.asked: list[tuple[str, ...]] = []

    def get_dagrun_state(self, *, dag_id: str, run_id: str) -> str:
        self.asked.append(("dag_run", run_id))
        return self.runs[run_id]

    def get_task_states(
        self,
        *,
        dag_id: str,
        run_ids: list[str],
        task_ids: list[str],
        map_index: int | None = None,
    ) -> dict[str, dict[str, str]]:
        """Like Airflow's: a mapped instance is named ``<task_id>_<map_index>``."""
        question = ("tasks", ",".join(run_ids), ",".join(sorted(task_ids)))
        self.asked.append(question if map_index is None else (*question, str(map_index)))

        def wanted(name: str) -> bool:
            if map_index is not None:
                return name in {f"{t}_{map_index}" for t in task_ids}
            return name in task_ids or name.rsplit("_", 1)[0] in task_ids

        return {r: {t: s for t, s in self.tasks[r].items() if wanted(t)} for r in run_ids}


@pytest.fixture
def store(sqlite_url: str) -> Iterator[CatalogStore]:
    deployed = deployed_store(sqlite_url, clock=utcnow)
    try:
        yield deployed
    finally:
        deployed.engine.dispose()


def failed_run(store: CatalogStore) -> None:
    """run_1: ``a`` succeeded, ``b`` failed (final), ``c`` never started; the run failed."""
    batch = BatchSpec(DAG_ID, "run_1")
    a = store.start_task(TaskSpec(batch, "a"))
    store.end_task(a.execution_id, TaskOutcome.SUCCESS)
    b = store.start_task(TaskSpec(batch, "b"))
    store.end_task(b.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch(DAG_ID, "run_1", succeeded=False)


def test_the_batch_creating_start_reads_the_whole_failed_run(store: CatalogStore) -> None:
    failed_run(store)
    airflow = AirflowRecord(
        {"run_1": "failed"}, {"run_1": {"a": "success", "b": "failed", "c": "upstream_failed"}}
    )
    # This start creates run_2's batch: not a first start in its lineage (decision 0121).
    assert adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "a") is True
    assert airflow.asked == [("dag_run", "run_1"), ("tasks", "run_1", "a,b")]


def test_a_later_start_asks_only_for_its_own_task(store: CatalogStore) -> None:
    failed_run(store)
    run_2 = BatchSpec(DAG_ID, "run_2")
    assert store.start_task(TaskSpec(run_2, "a")).run is Run.SKIP  # creates the resumed batch
    lineage = batch_row(store, DAG_ID, "run_1").LineageID
    assert batch_row(store, DAG_ID, "run_2").LineageID == lineage
    # While run_2 goes on, the on-call fixes b's data by hand and marks it success in run_1.
    airflow = AirflowRecord(
        {"run_1": "failed"}, {"run_1": {"a": "success", "b": "success", "c": "upstream_failed"}}
    )
    adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "b")
    assert airflow.asked == [("tasks", "run_1", "b")]  # one question, no DAG run state
    b1 = next(r for r in store.executions(DAG_ID, "run_1") if r.TaskId == "b")
    assert (b1.ExecutionStatus, b1.NextLoadStatus) == ("S", "C")  # adopted, batch failed
    assert store.start_task(TaskSpec(run_2, "b")).run is Run.SKIP  # not run again
    batch1 = batch_row(store, DAG_ID, "run_1")
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")  # the batch: untouched


def test_a_later_start_leaves_other_tasks_to_their_own_starts(store: CatalogStore) -> None:
    failed_run(store)
    run_2 = BatchSpec(DAG_ID, "run_2")
    store.start_task(TaskSpec(run_2, "a"))
    airflow = AirflowRecord({"run_1": "failed"}, {"run_1": {"a": "success", "b": "success"}})
    # c has no row in run_1: Airflow's answer could change nothing, and c's start is a first
    # start in the lineage (the guarded INSERT covers it, decision 0121).
    assert adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "c") is False
    assert airflow.asked == []
    b1 = next(r for r in store.executions(DAG_ID, "run_1") if r.TaskId == "b")
    assert b1.ExecutionStatus == "F"  # c's decision does not read b's row: b's start adopts it
    assert adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "b") is True  # b's rows
    b1 = next(r for r in store.executions(DAG_ID, "run_1") if r.TaskId == "b")
    assert b1.ExecutionStatus == "S"


def test_a_later_start_of_a_fresh_lineage_asks_nothing(store: CatalogStore) -> None:
    batch = BatchSpec(DAG_ID, "run_1")
    store.end_task(store.start_task(TaskSpec(batch, "a")).execution_id, TaskOutcome.SUCCESS)
    store.end_batch(DAG_ID, "run_1", succeeded=True)
    store.start_task(TaskSpec(BatchSpec(DAG_ID, "run_2"), "a"))
    airflow = AirflowRecord({"run_1": "success"}, {"run_1": {"a": "success"}})
    assert adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "b") is False
    assert airflow.asked == []


def adoptions(store: CatalogStore, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The runs of each call of the store's adoption (its transaction locks the earlier batch)."""
    calls: list[list[str]] = []
    original = store.adopt_airflow_states

    def recorded(dag_id: str, runs: Sequence[RunEvidence]) -> list[str]:
        calls.append([r.run_id for r in runs])
        return original(dag_id, runs)

    monkeypatch.setattr(store, "adopt_airflow_states", recorded)
    return calls


def test_a_later_start_adopts_only_what_disagrees(
    store: CatalogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow agrees with the task's own rows (the common case): no adoption transaction, so
    the resumed run's tasks do not queue on the earlier batch's lock. It disagrees: adopted."""
    failed_run(store)
    store.start_task(TaskSpec(BatchSpec(DAG_ID, "run_2"), "a"))
    calls = adoptions(store, monkeypatch)
    agrees = AirflowRecord({"run_1": "failed"}, {"run_1": {"a": "success", "b": "failed"}})
    adopt_airflow_outcomes(agrees, store, DAG_ID, "run_2", "b")
    adopt_airflow_outcomes(agrees, store, DAG_ID, "run_2", "c")  # no row in run_1: nothing
    assert calls == []
    (waiting,) = store.runs_awaiting_evidence(DAG_ID, "run_2", task_id="b")
    assert [(r.task_id, r.map_index, r.status_code) for r in waiting.task_rows or ()] == [
        ("b", -1, "F")
    ]
    marked = AirflowRecord({"run_1": "failed"}, {"run_1": {"a": "success", "b": "success"}})
    adopt_airflow_outcomes(marked, store, DAG_ID, "run_2", "b")
    assert calls == [["run_1"]]


def failed_mapped_run(store: CatalogStore, items: int) -> None:
    """run_1: ``p`` succeeded; ``m`` mapped over ``items`` items (identity ``item-<i>`` at map
    index i), all succeeded but the last, which failed; the run failed."""
    batch = BatchSpec(DAG_ID, "run_1")
    store.end_task(store.start_task(TaskSpec(batch, "p")).execution_id, TaskOutcome.SUCCESS)
    for i in range(items):
        started = store.start_task(TaskSpec(batch, "m", map_index=i, item_fingerprint=f"item-{i}"))
        last = i == items - 1
        outcome = TaskOutcome.FINAL_FAILURE if last else TaskOutcome.SUCCESS
        store.end_task(started.execution_id, outcome, error_message="boom" if last else None)
    store.end_batch(DAG_ID, "run_1", succeeded=False)


def test_a_mapped_item_reads_and_asks_only_about_its_own_identity(store: CatalogStore) -> None:
    """Each item start of a resumed mapped task used to read every item's row of the failed run
    and ask Airflow for every item's state: O(items) per item, O(items²) per run (issue 12,
    goal 2). Items are matched by identity, not position: the item is asked about where its
    identity sat in the failed run."""
    failed_mapped_run(store, 20)
    run_2 = BatchSpec(DAG_ID, "run_2")
    assert store.start_task(TaskSpec(run_2, "p")).run is Run.SKIP  # creates the resumed batch
    (waiting,) = store.runs_awaiting_evidence(
        DAG_ID, "run_2", task_id="m", item_fingerprint="item-19"
    )
    assert [(r.task_id, r.map_index, r.status_code) for r in waiting.task_rows or ()] == [
        ("m", 19, "F")
    ]
    # The on-call fixed item 19's data by hand and marked its instance success in run_1. In
    # run_2 the input list changed order: that identity is now at map index 0.
    states = {f"m_{i}": "success" for i in range(20)}
    airflow = AirflowRecord({"run_1": "failed"}, {"run_1": {"p": "success", **states}})
    adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "m", "item-19")
    assert airflow.asked == [("tasks", "run_1", "m", "19")]  # one instance, where it sat
    item_19 = next(
        r for r in store.executions(DAG_ID, "run_1") if r.TaskId == "m" and r.MapIndex == 19
    )
    assert (item_19.ExecutionStatus, item_19.NextLoadStatus) == ("S", "C")  # adopted
    again = TaskSpec(run_2, "m", map_index=0, item_fingerprint="item-19")
    assert store.start_task(again).run is Run.SKIP  # not run again

    # A new identity has no row in run_1: nothing is read, Airflow is not asked.
    airflow.asked.clear()
    adopt_airflow_outcomes(airflow, store, DAG_ID, "run_2", "m", "item-new")
    assert airflow.asked == []


def test_a_slot_whose_latest_try_holds_another_identity_is_not_the_items(
    store: CatalogStore,
) -> None:
    """Within one run a slot's tries normally share an identity; if its input changed (the
    producer was cleared and returned another list), Airflow's state of the slot is the latest
    try's, and must not be adopted onto an older try of another identity."""
    batch = BatchSpec(DAG_ID, "run_1")
    store.end_task(store.start_task(TaskSpec(batch, "p")).execution_id, TaskOutcome.SUCCESS)
    first = store.start_task(TaskSpec(batch, "m", map_index=0, item_fingerprint="old"))
    store.end_task(first.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    second = TaskSpec(batch, "m", map_index=0, try_number=2, item_fingerprint="new")
    store.end_task(store.start_task(second).execution_id, TaskOutcome.FINAL_FAILURE)
    store.end_batch(DAG_ID, "run_1", succeeded=False)
    store.start_task(TaskSpec(BatchSpec(DAG_ID, "run_2"), "p"))
    (old,) = store.runs_awaiting_evidence(DAG_ID, "run_2", task_id="m", item_fingerprint="old")
    assert old.task_rows == ()
    (new,) = store.runs_awaiting_evidence(DAG_ID, "run_2", task_id="m", item_fingerprint="new")
    assert [(r.map_index, r.execution_id) for r in new.task_rows or ()] == [
        (0, store.executions(DAG_ID, "run_1")[-1].ExecutionID)
    ]


def test_an_item_asked_about_in_two_failed_runs_is_asked_where_it_sat_in_each(
    store: CatalogStore,
) -> None:
    """Two failed runs of the lineage await evidence, and the list was reordered between them:
    the identity sat at another map index in each. One question per index, each naming its
    runs; never every item of the task."""
    run_1, run_2 = BatchSpec(DAG_ID, "run_1"), BatchSpec(DAG_ID, "run_2")
    store.end_task(store.start_task(TaskSpec(run_1, "p")).execution_id, TaskOutcome.SUCCESS)
    a1 = store.start_task(TaskSpec(run_1, "m", map_index=0, item_fingerprint="item-a"))
    store.end_task(a1.execution_id, TaskOutcome.SUCCESS)
    b1 = store.start_task(TaskSpec(run_1, "m", map_index=1, item_fingerprint="item-b"))
    store.end_task(b1.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch(DAG_ID, "run_1", succeeded=False)
    # run_2 resumes with the list reordered (item-b at 0, item-a at 1); item-b fails again.
    assert store.start_task(TaskSpec(run_2, "p")).run is Run.SKIP
    a2 = TaskSpec(run_2, "m", map_index=1, item_fingerprint="item-a")
    assert store.start_task(a2).run is Run.SKIP
    b2 = store.start_task(TaskSpec(run_2, "m", map_index=0, item_fingerprint="item-b"))
    store.end_task(b2.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch(DAG_ID, "run_2", succeeded=False)
    store.start_task(TaskSpec(BatchSpec(DAG_ID, "run_3"), "p"))  # run_3's batch resumes them

    # The on-call marks item-b's instance of run_1 success by hand; run_2's stays failed.
    airflow = AirflowRecord(
        {"run_1": "failed", "run_2": "failed"},
        {
            "run_1": {"p": "success", "m_0": "success", "m_1": "success"},
            "run_2": {"p": "skipped", "m_0": "failed", "m_1": "skipped"},
        },
    )
    adopt_airflow_outcomes(airflow, store, DAG_ID, "run_3", "m", "item-b")
    assert sorted(airflow.asked) == [("tasks", "run_1", "m", "1"), ("tasks", "run_2", "m", "0")]
    b1_row = next(r for r in store.executions(DAG_ID, "run_1") if r.ExecutionID == b1.execution_id)
    assert b1_row.ExecutionStatus == "S"  # adopted where it sat in run_1
    b2_row = next(r for r in store.executions(DAG_ID, "run_2") if r.ExecutionID == b2.execution_id)
    assert b2_row.ExecutionStatus == "F"  # Airflow agrees: left alone
