"""Concurrency of the catalog store with real processes, on PostgreSQL and on SQLite files.

Eight worker processes (``tests/concurrency_worker.py``, multiprocessing "spawn") each hold their
own engine and store; they meet at a barrier and then start and end tasks at the same moment.
Every wait is bounded (barrier and result timeouts), and the pool's processes are killed by pid
if they do not stop when asked. Only the loopback PostgreSQL server and local files are used.

What must hold whatever the interleaving (DESIGN.md §4): transitions serialise on the batch row,
so no worker sees a deadlock or serialization error (the store retries those), no stamping is
lost, starts are idempotent on ``ExternalExecutionID``, and one package never runs twice at once.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.pool import NullPool

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.schema import CatalogSchema, build_schema
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from tests import concurrency_worker

pytestmark = pytest.mark.slow

WORKERS = 8
JOB_TIMEOUT = 60.0  # seconds for one job on every worker; a job takes well under 5 s
STOP_TIMEOUT = 10.0


class WorkerPool:
    """Eight spawned worker processes, a job queue each, one result queue, one barrier."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.barrier = ctx.Barrier(WORKERS)
        self.results: Any = ctx.Queue()
        self.jobs: list[Any] = [ctx.Queue() for _ in range(WORKERS)]
        self.procs = [
            ctx.Process(
                target=concurrency_worker.serve,
                args=(i, self.jobs[i], self.results, self.barrier),
                name=f"bfx-concurrency-worker-{i}",
                daemon=True,
            )
            for i in range(WORKERS)
        ]
        for proc in self.procs:
            proc.start()
        self.broken = False

    def run(self, job: str, per_worker: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``job`` on every worker (``per_worker[i]`` are worker i's arguments); return the
        payloads in worker order. Fails the test if a worker raised, died or timed out."""
        assert len(per_worker) == WORKERS
        self.barrier.reset()  # nobody waits on it between jobs; clears an earlier abort
        for jobs, kwargs in zip(self.jobs, per_worker, strict=True):
            jobs.put((job, kwargs))
        deadline = time.monotonic() + JOB_TIMEOUT
        answers: dict[int, tuple[str, Any]] = {}
        while len(answers) < WORKERS:
            try:
                index, status, payload = self.results.get(timeout=0.5)
            except queue.Empty:
                dead = [p.name for p in self.procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.broken = True
                    pytest.fail(
                        f"job {job!r}: {len(answers)}/{WORKERS} workers answered; "
                        + (f"dead: {dead}" if dead else f"timed out after {JOB_TIMEOUT:.0f} s")
                    )
                continue
            answers[index] = (status, payload)
        errors = {i: payload for i, (status, payload) in answers.items() if status != "ok"}
        if errors:
            pytest.fail(
                f"job {job!r}: {len(errors)} worker(s) raised:\n"
                + "\n".join(f"--- worker {i}:\n{tb}" for i, tb in sorted(errors.items()))
            )
        return [answers[i][1] for i in range(WORKERS)]

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()  # SIGKILL to this worker's own pid
                proc.join(timeout=STOP_TIMEOUT)
        for q in [*self.jobs, self.results]:
            q.close()
            q.join_thread()


class PoolHolder:
    """Module-wide pool, started on first use and restarted if a job left it wedged."""

    def __init__(self) -> None:
        self._pool: WorkerPool | None = None

    def get(self) -> WorkerPool:
        if self._pool is not None and self._pool.broken:
            self._pool.close()
            self._pool = None
        if self._pool is None:
            self._pool = WorkerPool()
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


@pytest.fixture(scope="module")
def pool_holder() -> Iterator[PoolHolder]:
    holder = PoolHolder()
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def workers(pool_holder: PoolHolder) -> WorkerPool:
    return pool_holder.get()


class Catalog:
    """A freshly deployed catalog, read back by the test with plain Core queries."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_catalog_engine(url, poolclass=NullPool)
        upgrade(self.engine)
        self.s: CatalogSchema = build_schema(self.engine.dialect.name)
        self.store = CatalogStore(self.engine)

    def rows(self, dag_id: str, run_id: str | None = None) -> list[Any]:
        E = self.s.Execution
        query = select(E).where(E.c.DagId == dag_id)
        if run_id is not None:
            query = query.where(E.c.RunId == run_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(E.c.ExecutionID)))

    def errors_per_execution(self) -> Counter[int]:
        Err = self.s.ExecutionError
        with self.engine.connect() as conn:
            return Counter(int(r.ExecutionID) for r in conn.execute(select(Err.c.ExecutionID)))

    def duplicate_external_ids(self) -> list[Any]:
        E = self.s.Execution
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(E.c.ExternalExecutionID, func.count())
                    .group_by(E.c.ExternalExecutionID)
                    .having(func.count() > 1)
                )
            )

    def package_names(self) -> Counter[str]:
        P = self.s.Package
        with self.engine.connect() as conn:
            return Counter(str(n) for n in conn.execute(select(P.c.PackageName)).scalars())


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    try:
        yield cat
    finally:
        cat.engine.dispose()


def _batch_rows(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.TaskId is None]


def _task_rows(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.TaskId is not None]


# ---------------------------------------------------------------------------------------------
# One batch, forty tasks, eight processes, successes and final failures racing
# ---------------------------------------------------------------------------------------------

TASKS = 40
# (worker, position in that worker's list) of the tasks that fail finally. Every worker ends a
# success first, so the first end to commit anywhere is a success (it sees a batch not failed
# yet); workers 1, 4 and 6 end successes after their own final failure (they must see it).
FAILURES = {(1, 2), (4, 2), (6, 1), (6, 3)}


def test_forty_tasks_end_concurrently_without_lost_stamping(
    workers: WorkerPool, catalog: Catalog
) -> None:
    dag_id, run_id = "conc_dag", "scheduled__2026-01-01"
    plan: list[list[tuple[str, str]]] = [[] for _ in range(WORKERS)]
    for n in range(TASKS):
        w, pos = n % WORKERS, n // WORKERS
        outcome = "final_failure" if (w, pos) in FAILURES else "success"
        plan[w].append((f"t{n:02d}", outcome))
    failing = {task for tasks in plan for task, o in tasks if o == "final_failure"}

    answers = workers.run(
        "run_tasks",
        [
            dict(url=catalog.url, dag_id=dag_id, run_id=run_id, tasks=plan[w])
            for w in range(WORKERS)
        ],
    )

    started = [s for a in answers for s in a["started"]]
    assert len(started) == TASKS
    assert {(s["status"], s["run"], s["repeated"]) for s in started} == {("E", "run", False)}
    batch_ids = {s["batch_execution_id"] for s in started}
    assert len(batch_ids) == 1, f"tasks of one run were given several batch rows: {batch_ids}"
    (batch_id,) = batch_ids

    ended = {e["task_id"]: e for a in answers for e in a["ended"]}
    assert len(ended) == TASKS and all(e["changed"] for e in ended.values())
    for task in failing:
        assert (ended[task]["status"], ended[task]["next_load_status"]) == ("F", "R"), task
        assert ended[task]["batch_failed"], task
    success_returns = Counter(e["next_load_status"] for t, e in ended.items() if t not in failing)
    # Both sides of the success rule were really exercised: a success that committed before any
    # failure (P, stamped C later) and successes that committed after one (C at once).
    assert success_returns["P"] > 0 and success_returns["C"] > 0, success_returns
    assert set(success_returns) == {"P", "C"}
    for w, tasks in enumerate(plan):
        first_failure = next(
            (i for i, (_, o) in enumerate(tasks) if o == "final_failure"), len(tasks)
        )
        for task, outcome in tasks[first_failure + 1 :]:
            if outcome == "success":
                assert ended[task]["next_load_status"] == "C", (
                    f"{task} ended after worker {w}'s own final failure had committed, yet its "
                    f"success did not see the failed batch: {ended[task]}"
                )

    rows = catalog.rows(dag_id)
    (batch,) = _batch_rows(rows)  # exactly one batch row
    assert batch.ExecutionID == batch_id
    assert (batch.ExecutionStatus, batch.NextLoadStatus) == ("F", "R")
    # Failed by tasks' final failures, not closed: only the end of the DAG run closes it
    # (docs/decisions/0007), so a sibling starting late sees the failure instead of reopening.
    assert batch.EndTime is None
    by_task = {r.TaskId: r for r in _task_rows(rows)}
    assert len(by_task) == TASKS == len(_task_rows(rows))
    lost = {
        t: (r.ExecutionStatus, r.NextLoadStatus)
        for t, r in by_task.items()
        if t not in failing and (r.ExecutionStatus, r.NextLoadStatus) != ("S", "C")
    }
    assert not lost, f"successes not stamped NextLoadStatus C after the batch failed: {lost}"
    for task in failing:
        assert (by_task[task].ExecutionStatus, by_task[task].NextLoadStatus) == ("F", "R"), task
    for r in by_task.values():
        assert r.ParentExecutionID == batch_id and r.LineageID == batch.LineageID
        assert r.EndTime is not None and r.LeaseExpiresAt is None, r.TaskId

    errors = catalog.errors_per_execution()
    assert errors == Counter({by_task[t].ExecutionID: 1 for t in failing})
    assert catalog.duplicate_external_ids() == []
    packages = catalog.package_names()
    assert packages == Counter([dag_id] + [f"{dag_id}/t{n:02d}" for n in range(TASKS)])


# ---------------------------------------------------------------------------------------------
# Racing starts
# ---------------------------------------------------------------------------------------------


def _start_all(
    workers: WorkerPool,
    catalog: Catalog,
    dag_id: str,
    run_ids: list[str],
    task_id: str,
    tries: list[int],
    lease_seconds: float = 600.0,
) -> list[dict[str, Any]]:
    return workers.run(
        "start_one",
        [
            dict(
                url=catalog.url,
                dag_id=dag_id,
                run_id=run_ids[w],
                task_id=task_id,
                try_number=tries[w],
                lease_seconds=lease_seconds,
            )
            for w in range(WORKERS)
        ],
    )


@pytest.mark.parametrize("keys", ["same_key", "distinct_keys"])
def test_racing_first_task_of_a_new_run_creates_one_batch(
    workers: WorkerPool, catalog: Catalog, keys: str
) -> None:
    """No batch row and no package row yet: all workers start the run's first task at once."""
    dag_id, run_id = "race_dag", "manual__1"
    tries = [1] * WORKERS if keys == "same_key" else list(range(1, WORKERS + 1))
    answers = _start_all(workers, catalog, dag_id, [run_id] * WORKERS, "first", tries)

    rows = catalog.rows(dag_id)
    (batch,) = _batch_rows(rows)
    assert (batch.ExecutionStatus, batch.NextLoadStatus) == ("E", "C")
    assert {a["batch_execution_id"] for a in answers} == {batch.ExecutionID}
    assert catalog.package_names() == Counter([dag_id, f"{dag_id}/first"])
    assert catalog.duplicate_external_ids() == []
    tasks = _task_rows(rows)

    if keys == "same_key":
        # One row; every worker was handed that row, and exactly one of them created it.
        (row,) = tasks
        assert {a["execution_id"] for a in answers} == {row.ExecutionID}
        assert sorted(a["repeated"] for a in answers) == [False] + [True] * (WORKERS - 1)
        assert {(a["status"], a["run"]) for a in answers} == {("E", "run")}
        assert (row.ExecutionStatus, row.NextLoadStatus) == ("E", "C")
    else:
        # A row per try; exactly one runs, the others are refused by its live lease.
        assert len(tasks) == WORKERS
        assert {a["execution_id"] for a in answers} == {r.ExecutionID for r in tasks}
        assert not any(a["repeated"] for a in answers)
        outcomes = Counter((a["status"], a["next_load_status"], a["run"]) for a in answers)
        assert outcomes == Counter({("E", "C", "run"): 1, ("A", "P", "refuse"): WORKERS - 1})
        assert Counter(r.ExecutionStatus for r in tasks) == Counter({"E": 1, "A": WORKERS - 1})


def test_racing_tries_are_refused_while_a_live_lease_holds(
    workers: WorkerPool, catalog: Catalog
) -> None:
    """One try holds a live lease; eight other tries of the same package start at once."""
    dag_id, run_id = "lease_dag", "manual__1"
    holder = catalog.store.start_task(
        TaskSpec(
            BatchSpec(dag_id, run_id), "load", try_number=1, lease_owner="holder", lease_seconds=600
        )
    )
    assert holder.status.value == "E"
    (before,) = [r for r in catalog.rows(dag_id) if r.ExecutionID == holder.execution_id]

    answers = _start_all(
        workers, catalog, dag_id, [run_id] * WORKERS, "load", list(range(2, WORKERS + 2))
    )

    assert {(a["status"], a["next_load_status"], a["run"]) for a in answers} == {
        ("A", "P", "refuse")
    }
    rows = catalog.rows(dag_id)
    (after,) = [r for r in rows if r.ExecutionID == holder.execution_id]
    assert after._asdict() == before._asdict(), "the live execution was touched"
    tasks = _task_rows(rows)
    assert len(tasks) == WORKERS + 1
    assert [r.ExecutionID for r in tasks if r.ExecutionStatus in ("E", "R", "D")] == [
        holder.execution_id
    ]
    assert len(_batch_rows(rows)) == 1
    assert catalog.duplicate_external_ids() == []


def test_racing_tries_of_one_package_in_an_open_batch_run_once(
    workers: WorkerPool, catalog: Catalog
) -> None:
    """The batch row exists (another task of the run started), no try of ``load`` is active:
    eight tries of ``load`` start at once. "Another active execution of this package: live
    lease -> this one is refused" (DESIGN.md §4) must leave exactly one running."""
    dag_id, run_id = "open_dag", "manual__1"
    catalog.store.start_task(TaskSpec(BatchSpec(dag_id, run_id), "other", lease_seconds=600))

    answers = _start_all(
        workers, catalog, dag_id, [run_id] * WORKERS, "load", list(range(1, WORKERS + 1))
    )

    running = [a for a in answers if a["run"] == "run"]
    assert len(running) == 1, (
        f"{len(running)} tries of one package were allowed to run at the same time: "
        f"{sorted((a['try_number'], a['execution_id'], a['status']) for a in running)}"
    )
    rows = [r for r in _task_rows(catalog.rows(dag_id)) if r.TaskId == "load"]
    assert Counter(r.ExecutionStatus for r in rows) == Counter({"E": 1, "A": WORKERS - 1})


def test_one_first_try_started_at_once_by_eight_processes_is_one_row(
    workers: WorkerPool, catalog: Catalog
) -> None:
    """The batch row exists and ``load``'s package is registered, so every start below tries
    the guarded first start (decision 0121) at the same moment, all for the same try. One
    INSERT wins; the others violate the try's unique key, are re-run, match nothing and read
    the winner's row ("the same key always means the same row")."""
    dag_id, run_id = "first_dag", "manual__1"
    catalog.store.start_task(
        TaskSpec(BatchSpec(dag_id, run_id), "other", lease_seconds=600, read_first=True)
    )
    catalog.store.set_package(dag_id, "load", enabled=True)

    answers = _start_all(workers, catalog, dag_id, [run_id] * WORKERS, "load", [1] * WORKERS)

    rows = [r for r in _task_rows(catalog.rows(dag_id)) if r.TaskId == "load"]
    assert [(r.ExecutionStatus, r.TryNumber) for r in rows] == [("E", 1)]
    assert {(a["execution_id"], a["status"], a["run"]) for a in answers} == {
        (rows[0].ExecutionID, "E", "run")
    }
    assert catalog.duplicate_external_ids() == []


def test_overlapping_runs_never_run_one_package_twice(
    workers: WorkerPool, catalog: Catalog
) -> None:
    """Eight overlapping runs of one DAG (each batch open, BFX_CONCURRENT_BATCH) start the same
    task at once: "the per-package guard at task start still keeps one package from running
    twice at once" (DESIGN.md §4)."""
    dag_id = "overlap_dag"
    run_ids = [f"manual__{w}" for w in range(WORKERS)]
    for w, run_id in enumerate(run_ids):
        # A live task in every run keeps every batch open, so each later run is a concurrent
        # batch (a task of its own package each: the package guard would refuse a second one).
        keep = catalog.store.start_task(
            TaskSpec(BatchSpec(dag_id, run_id), f"keep{w}", lease_seconds=600)
        )
        assert keep.status.value == "E"
    batches = _batch_rows(catalog.rows(dag_id))
    assert [b.ExecutionStatus for b in batches] == ["E"] * WORKERS
    assert len({b.LineageID for b in batches}) == WORKERS  # fresh lineages: overlapping runs
    catalog.store.set_package(dag_id, "load", enabled=True)  # registered: no insert race

    answers = _start_all(workers, catalog, dag_id, run_ids, "load", [1] * WORKERS)

    running = [a for a in answers if a["run"] == "run"]
    assert len(running) == 1, (
        f"{len(running)} runs executed package {dag_id}.load at the same time: "
        f"{sorted((a['batch_execution_id'], a['execution_id']) for a in running)}"
    )
    assert catalog.duplicate_external_ids() == []
