"""Crash recovery with real processes (DESIGN.md §4 step 2, §5 leases and checkpoints).

A DAG run of ``bfx_crash_recovery`` (``extract`` -> ``load`` of N chunks -> ``publish``) runs
with ``dag.test()`` in a subprocess (``crash_worker.py``), which is the task process: the lease
owner of its rows is ``host:<its pid>``. The tests SIGKILL that process (only it: by its pid), or
run a second DAG run next to it in this process, and read what both left in Airflow's metadata
database, the catalog and the work file the tasks append to (``$BFX_CRASH_DIR/work``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import DAGS_FOLDER, Catalog, bfx_log, next_logical_date, run_dag, xcom_value

from airflow_provider_bfx.catalog.store import utcnow

pytestmark = pytest.mark.slow

DAG_ID = "bfx_crash_recovery"
WORKER = Path(__file__).with_name("crash_worker.py")
CHUNKS = 8
WAIT_SECONDS = 90.0  # every wait below is bounded by this


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "work_dir"
    folder.mkdir()
    monkeypatch.setenv("BFX_CRASH_DIR", str(folder))
    monkeypatch.setenv("BFX_CRASH_CHUNKS", str(CHUNKS))
    return folder


def work_lines(folder: Path) -> list[tuple[str, int]]:
    """``(what, execution_id)`` per line of the work file: one line per unit of work done."""
    path = folder / "work"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().split("\n")[:-1]:  # a line still being written is not counted
        what, execution_id = line.split()
        out.append((what, int(execution_id)))
    return out


@contextmanager
def worker_run(logical_date: datetime, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One ``dag.test()`` run of the DAG in a subprocess that inherits this environment (the
    Airflow home, the catalog, ``[bfx]`` settings, ``$BFX_CRASH_*``). Killed on the way out if
    it is still running, so that no test leaves it behind."""
    with log_path.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), str(DAGS_FOLDER), DAG_ID, logical_date.isoformat()],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield worker
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=WAIT_SECONDS)


def wait_for(what: str, condition: Any, worker: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert worker.poll() is None, f"the worker ended before {what}:\n" + tail(log_path)
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + tail(log_path)
        time.sleep(0.05)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


def airflow_run(logical_date: datetime) -> tuple[str, str, dict[str, str]]:
    """(run_id, state, {task_id: state}) of the run of this DAG at ``logical_date``."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(
            select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.logical_date == logical_date)
        )
        assert run is not None
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run.run_id
            )
        ).all()
        return (
            run.run_id,
            str(getattr(run.state, "value", run.state)),
            {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis},
        )


def checkpoints(catalog: Catalog, execution_ids: set[int]) -> dict[str, int]:
    """``{chunk node: writer ExecutionID}`` of the chunk checkpoints written by these executions."""
    from sqlalchemy import select

    store = catalog.store()
    C = store.s.ExecutionCheckpoint
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(C.c.NodeKey, C.c.ExecutionID).where(C.c.NodeKey.like("chunk-%"))
            ).all()
    finally:
        store.engine.dispose()
    return {str(node): int(writer) for node, writer in rows if int(writer) in execution_ids}


def row_of(catalog: Catalog, execution_id: int) -> Any:
    (row,) = [r for r in catalog.rows(DAG_ID) if r.ExecutionID == execution_id]
    return row


def chunk(i: int) -> str:
    return f"chunk-{i}"


# -- 1. SIGKILL mid-work, lease expiry, resume from checkpoints --------------------------------


def test_a_killed_task_process_is_aborted_after_its_lease_and_resumes_from_its_checkpoints(
    catalog: Catalog,
    work_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run 1 (a subprocess) is SIGKILLed once ``load`` has done 3 of its 8 chunks: its row stays
    ``E`` with a lease nobody renews. Once the lease has lapsed, run 2 (a new DAG run, in this
    process) aborts the stale row (``A``/``R``: no copy checkpoint), reconciles run 1's batch
    (``F``/``R``), resumes its lineage, skips ``extract`` as completed, restarts ``load``, which
    reads its checkpoints and processes only the chunks without one, and runs ``publish``.

    Work done, exactly: every chunk whose checkpoint run 1 committed is never processed again;
    run 2 processes exactly the chunks without a checkpoint, in order, starting at the first one;
    so every chunk is processed once in all, except the chunk in flight at the kill when the kill
    fell between its work-file line and its checkpoint commit (a few milliseconds of each 0.3 s
    chunk): that chunk, and only that one, is processed twice."""
    monkeypatch.setenv("AIRFLOW__BFX__LEASE_DURATION", "2")  # this process and the worker
    monkeypatch.setenv("BFX_CRASH_CHUNK_SECONDS", "0.3")
    date1 = next_logical_date()
    log1 = tmp_path / "worker-1.log"

    def chunks_done() -> list[str]:
        return [w for w, _ in work_lines(work_dir) if w.startswith("chunk-")]

    with worker_run(date1, log1) as worker:
        wait_for("load to process 3 chunks", lambda: len(chunks_done()) >= 3, worker, log1)
        worker.send_signal(signal.SIGKILL)  # the task process dies mid-work, by its pid
        assert worker.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL

    # -- what the crash left: an active row with a lease nobody renews
    run1_id, run1_state, tis1 = airflow_run(date1)
    assert run1_state == "running" and tis1["load"] == "running"  # nobody ended them
    rows1 = catalog.task_rows(DAG_ID, run1_id)
    stale = rows1[("load", -1)]
    owner = f"{socket.gethostname()}:{worker.pid}"
    assert (stale.ExecutionStatus, stale.NextLoadStatus) == ("E", "C")
    assert stale.LeaseOwner == owner and stale.LeaseExpiresAt is not None
    assert stale.EndTime is None
    assert rows1[("extract", -1)].ExecutionStatus == "S"
    assert ("publish", -1) not in rows1
    batch1 = catalog.batch_row(DAG_ID, run1_id)
    assert batch1.ExecutionStatus == "E"
    before = work_lines(work_dir)
    done_before = checkpoints(catalog, {stale.ExecutionID})
    k = len(done_before)
    # The checkpoints are a prefix 0..k-1; the work file holds those and at most the chunk in
    # flight. 3 lines were seen, so chunks 0 and 1 were checkpointed before chunk 2 began
    # (k = 2 when the kill fell between chunk 2's line and its checkpoint commit).
    assert sorted(done_before) == sorted(chunk(i) for i in range(k)) and k >= 2
    assert set(done_before.values()) == {stale.ExecutionID}
    chunk_lines_before = [w for w, e in before if w.startswith("chunk-")]
    in_flight_done = chunk_lines_before[k:]
    assert chunk_lines_before[:k] == [chunk(i) for i in range(k)]
    assert in_flight_done in ([], [chunk(k)])

    # -- the lease lapses: nobody renews it any more (renewed every second, 2 s long)
    lapse = (stale.LeaseExpiresAt - utcnow()).total_seconds()
    assert lapse <= 2.0
    time.sleep(max(0.0, lapse) + 0.2)
    caplog.clear()
    run2 = run_dag(DAG_ID)

    assert run2.state == "success"
    assert run2.state_of("extract") == "skipped"  # completed in run 1's lineage
    assert run2.state_of("load") == "success"
    assert run2.state_of("publish") == "success"
    aborted = row_of(catalog, stale.ExecutionID)
    assert (aborted.ExecutionStatus, aborted.EndTime is not None) == ("A", True)
    # Lineage closed by run 2's success: every NextLoadStatus of it is back to P. That the
    # expiry wrote R (no copy checkpoint, else D) is in its log line, asserted below.
    assert aborted.NextLoadStatus == "P"
    assert aborted.LeaseOwner == owner  # the row still says who held it
    batch1 = catalog.batch_row(DAG_ID, run1_id)
    assert (batch1.ExecutionStatus, batch1.EndTime is not None) == ("F", True)  # reconciled
    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert (batch2.ExecutionStatus, batch2.NextLoadStatus) == ("S", "P")
    assert batch2.OriginalExecutionID == batch1.ExecutionID and batch2.AttemptNumber == 2
    rows2 = catalog.task_rows(DAG_ID, run2.run_id)
    restarted = rows2[("load", -1)]
    assert (restarted.ExecutionStatus, restarted.NextLoadStatus) == ("S", "P")
    assert restarted.OriginalExecutionID == stale.ExecutionID
    assert restarted.AttemptNumber == 2
    assert rows2[("extract", -1)].ExecutionStatus == "C"
    assert rows2[("publish", -1)].ExecutionStatus == "S"

    log = bfx_log(caplog)
    expired = [line for line in log.splitlines() if line.startswith("[BFX_LEASE_EXPIRED]")]
    assert len(expired) == 1, log
    assert f"execution_id={stale.ExecutionID}" in expired[0]
    assert f"lease_owner={owner}" in expired[0]
    assert "task=load" in expired[0] and "next_load_status=R" in expired[0]
    assert f"[BFX_BATCH_RECONCILED] dag={DAG_ID} batch_execution_id={batch1.ExecutionID}" in log
    assert "[BFX_BATCH_RESUME]" in log
    extract1 = rows1[("extract", -1)].ExecutionID
    assert f"[BFX_SKIP_COMPLETED] dag={DAG_ID} task=extract" in log
    assert f"original_execution_id={extract1} prior_execution_id={extract1}" in log
    # the restart followed the instruction the expiry left on the stale row (R)
    assert f"[BFX_RETRY] dag={DAG_ID} task=load" in log
    assert f"prior_execution_id={stale.ExecutionID}" in log

    # -- the work, counted
    work = work_lines(work_dir)
    counts = Counter(w for w, _ in work)
    assert counts["extract"] == 1  # run 2 skipped it
    assert counts["publish"] == 1
    after = [w for w, e in work[len(before) :] if e == restarted.ExecutionID and w != "publish"]
    assert after == [chunk(i) for i in range(k, CHUNKS)]  # only the chunks without a checkpoint
    for i in range(CHUNKS):
        expected = 2 if chunk(i) in in_flight_done else 1
        assert counts[chunk(i)] == expected, (chunk(i), work)
    assert checkpoints(catalog, {restarted.ExecutionID}) == {
        chunk(i): restarted.ExecutionID for i in range(k, CHUNKS)
    }
    assert xcom_value(DAG_ID, run2.run_id, "load") == {
        "chunks": CHUNKS,
        "done_here": list(range(k, CHUNKS)),
    }
    assert xcom_value(DAG_ID, run2.run_id, "publish") == CHUNKS


# -- 2. a live lease refuses a concurrent start -------------------------------------------------


def test_a_live_lease_refuses_the_same_task_of_an_overlapping_dag_run(
    catalog: Catalog,
    work_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While run 1's ``load`` runs in a subprocess (held before its first chunk, lease live),
    run 2 of the same DAG starts in this process. Its batch start sees run 1's batch open with a
    live task: run 2 gets its own fresh lineage (``BFX_CONCURRENT_BATCH``, DESIGN §4 batch start)
    and runs ``extract``; its ``load`` meets the live execution of the same package (§4 task
    start, step 2): refused ``A``/``P``, the Airflow task fails with ``BFX_ALREADY_RUNNING``
    before any work, ``publish`` never runs. Every column of every run-1 row is the same before
    and after (the lease is long, so not even a renewal moves it meanwhile). Released, run 1
    finishes normally: each chunk processed once, by run 1's execution."""
    monkeypatch.setenv("AIRFLOW__BFX__LEASE_DURATION", "600")  # no renewal during the test
    monkeypatch.setenv("BFX_CRASH_CHUNK_SECONDS", "0.05")
    (work_dir / "hold").touch()
    date1 = next_logical_date()
    log1 = tmp_path / "worker-1.log"

    with worker_run(date1, log1) as worker:

        def load_started() -> bool:
            if not work_lines(work_dir):  # extract ran: the catalog is deployed
                return False
            return any(
                r.TaskId == "load" and r.ExecutionStatus == "E" for r in catalog.rows(DAG_ID)
            )

        wait_for("run 1's load to start", load_started, worker, log1)
        run1_id, _, _ = airflow_run(date1)
        live_before = catalog.rows(DAG_ID, run1_id)
        (live,) = [r for r in live_before if r.TaskId == "load"]
        owner = f"{socket.gethostname()}:{worker.pid}"
        assert live.LeaseOwner == owner

        caplog.clear()
        run2 = run_dag(DAG_ID)

        assert worker.poll() is None  # run 1 still running all along
        live_after = catalog.rows(DAG_ID, run1_id)
        assert [tuple(r) for r in live_after] == [tuple(r) for r in live_before]
        assert run2.state == "failed"
        assert run2.state_of("extract") == "success"  # a fresh lineage: it runs
        assert run2.state_of("load") == "failed"
        assert run2.state_of("publish") == "upstream_failed"
        rows2 = catalog.task_rows(DAG_ID, run2.run_id)
        refused = rows2[("load", -1)]
        assert (refused.ExecutionStatus, refused.NextLoadStatus) == ("A", "P")
        assert refused.ExecutionID != live.ExecutionID
        assert ("publish", -1) not in rows2
        batch1 = catalog.batch_row(DAG_ID, run1_id)
        batch2 = catalog.batch_row(DAG_ID, run2.run_id)
        assert batch2.OriginalExecutionID == batch2.ExecutionID != batch1.OriginalExecutionID
        log = bfx_log(caplog)
        assert (
            f"[BFX_CONCURRENT_BATCH] dag={DAG_ID} batch_execution_id={batch2.ExecutionID}"
            f" running_batch_execution_id={batch1.ExecutionID}"
        ) in log
        refusals = [line for line in log.splitlines() if line.startswith("[BFX_ALREADY_RUNNING]")]
        assert len(refusals) == 1, log
        assert "task=load" in refusals[0]
        assert f"running_execution_id={live.ExecutionID}" in refusals[0]
        assert f"lease_owner={owner}" in refusals[0]
        assert not [w for w, _ in work_lines(work_dir) if w.startswith("chunk-")]  # no work yet

        (work_dir / "hold").unlink()  # let run 1 go on
        assert worker.wait(timeout=WAIT_SECONDS) == 0, tail(log1)

    _, run1_state, tis1 = airflow_run(date1)
    assert run1_state == "success", tail(log1)
    assert tis1 == {"extract": "success", "load": "success", "publish": "success"}
    rows1 = catalog.task_rows(DAG_ID, run1_id)
    assert {t: (r.ExecutionStatus, r.NextLoadStatus) for (t, _), r in rows1.items()} == {
        "extract": ("S", "P"),
        "load": ("S", "P"),
        "publish": ("S", "P"),
    }
    assert rows1[("load", -1)].ExecutionID == live.ExecutionID
    batch1 = catalog.batch_row(DAG_ID, run1_id)
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("S", "P")
    work = work_lines(work_dir)
    chunk_work = [(w, e) for w, e in work if w.startswith("chunk-")]
    assert chunk_work == [(chunk(i), live.ExecutionID) for i in range(CHUNKS)]
    assert [w for w, _ in work].count("extract") == 2  # one per lineage
    assert [w for w, _ in work].count("publish") == 1  # run 1's only


# -- 1b. SIGKILL, and a rerun while the dead process's lease is still live ----------------------


def test_a_rerun_right_after_a_kill_resumes_because_the_lease_owner_is_dead(
    catalog: Catalog,
    work_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DESIGN.md §5: an owner ``host:pid`` on this host whose process no longer exists is dead
    at once. Run 1 is SIGKILLed mid-``load`` with a 10-minute lease; run 2 starts at once,
    minutes before that lease would lapse. It must not take run 1 for an overlapping run
    (``BFX_CONCURRENT_BATCH``, a fresh lineage, ``extract`` run again): it aborts the dead row
    (``BFX_LEASE_EXPIRED ... owner_dead=True``), resumes run 1's lineage and skips ``extract``."""
    monkeypatch.setenv("AIRFLOW__BFX__LEASE_DURATION", "600")  # this process and the worker
    monkeypatch.setenv("BFX_CRASH_CHUNK_SECONDS", "0.3")
    date1 = next_logical_date()
    log1 = tmp_path / "worker-1.log"

    with worker_run(date1, log1) as worker:
        wait_for(
            "load to process a chunk",
            lambda: any(w.startswith("chunk-") for w, _ in work_lines(work_dir)),
            worker,
            log1,
        )
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL

    run1_id, _, _ = airflow_run(date1)
    stale = catalog.task_rows(DAG_ID, run1_id)[("load", -1)]
    assert stale.ExecutionStatus == "E"
    assert (stale.LeaseExpiresAt - utcnow()).total_seconds() > 500  # far from lapsing
    caplog.clear()
    run2 = run_dag(DAG_ID)

    assert run2.state == "success"
    assert run2.state_of("extract") == "skipped"  # not repeated: the lineage resumed
    log = bfx_log(caplog)
    assert "[BFX_CONCURRENT_BATCH]" not in log
    assert "[BFX_BATCH_RESUME]" in log
    expired = [line for line in log.splitlines() if line.startswith("[BFX_LEASE_EXPIRED]")]
    assert len(expired) == 1 and f"execution_id={stale.ExecutionID}" in expired[0], log
    assert "owner_dead=True" in expired[0]
    assert row_of(catalog, stale.ExecutionID).ExecutionStatus == "A"
    batch2 = catalog.batch_row(DAG_ID, run2.run_id)
    assert batch2.OriginalExecutionID == catalog.batch_row(DAG_ID, run1_id).ExecutionID
    assert Counter(w for w, _ in work_lines(work_dir))["extract"] == 1
