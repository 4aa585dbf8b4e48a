"""Fewer round trips on PostgreSQL (decision 0101): BEGIN with the first statement, the writes
a transition does not read back with the COMMIT. Counted on the wire, by a TCP proxy between
psycopg2 and the real server that records each simple query (one round trip each)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, insert, make_url, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool

from airflow_provider_bfx.catalog.codes import ExecutionStatus, NextLoadStatus
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.facts import task_facts
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.pipeline import write
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from tests.wire import QueryRecorder


@pytest.fixture
def wired(pg_url: str) -> Iterator[tuple[CatalogStore, QueryRecorder]]:
    url = make_url(pg_url)
    deploy = create_catalog_engine(url)
    upgrade(deploy)
    deploy.dispose()
    proxy = QueryRecorder(url.host or "127.0.0.1", url.port or 5432)
    via = url.set(host="127.0.0.1", port=proxy.port).update_query_dict(
        {"sslmode": "disable", "gssencmode": "disable"}
    )
    engine = create_catalog_engine(via, poolclass=QueuePool, pool_size=1, max_overflow=0)
    try:
        store = CatalogStore(engine)
        store.executions("warm-up")  # connect, check the schema
        yield store, proxy
    finally:
        engine.dispose()
        proxy.sock.close()


def test_task_start_and_task_end_are_two_round_trips_each(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    store, proxy = wired
    first = BatchSpec("pipe_dag", "run-0")  # registers the packages (a first sight's extra reads)
    # A failed try, then a successful one: the failure's end prepares the end facts.
    failed = store.start_task(TaskSpec(first, "load"))
    store.end_task(failed.execution_id, TaskOutcome.FAILED_TRY, error_message="first")
    retried = store.start_task(TaskSpec(first, "load", try_number=2))
    store.end_task(retried.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("pipe_dag", "run-0", succeeded=True)
    batch = BatchSpec("pipe_dag", "run-1")
    store.start_batch(batch)

    proxy.queries.clear()
    # A task with no upstream reads its facts at once (decision 0121: it may start the batch).
    started = store.start_task(TaskSpec(batch, "load", read_first=True))
    start_sent = list(proxy.queries)
    proxy.queries.clear()
    store.end_task(started.execution_id, TaskOutcome.FAILED_TRY, error_message="boom")
    end_sent = list(proxy.queries)

    # The facts queries were prepared by run-0's start and end: now executed by name.
    for sent, facts in ((start_sent, "task_facts"), (end_sent, "end_facts")):
        assert len(sent) == 2, sent
        assert sent[0].startswith("BEGIN;") and f"\nEXECUTE bfx_{facts}_" in sent[0], sent
        assert "PREPARE" not in sent[0], sent
        assert sent[1].rstrip().endswith("COMMIT"), sent
    assert "INSERT INTO bfx.execution " in start_sent[1]
    assert (
        "UPDATE bfx.execution " in end_sent[1] and "INSERT INTO bfx.executionerror" in end_sent[1]
    )
    rows = {r.ExecutionID: r for r in store.executions("pipe_dag", "run-1")}
    assert (
        rows[started.execution_id].ExecutionStatus,
        rows[started.execution_id].NextLoadStatus,
    ) == (
        "F",
        "R",
    )


def test_a_successful_task_end_is_one_round_trip(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """A success's end is one guarded UPDATE sent outside any transaction: no BEGIN, no
    COMMIT, the server commits it; prepared once per session (decision 0120). When a
    sibling's final failure has failed the batch in between, the guard matches nothing and
    the end is read, decided and written as before (two round trips): the row gets
    NextLoadStatus C, not P."""
    store, proxy = wired
    batch = BatchSpec("pipe_dag", "run-1")
    first, ok, late, failing = (
        store.start_task(TaskSpec(batch, t)) for t in ("first", "a", "b", "c")
    )

    proxy.queries.clear()
    store.end_task(first.execution_id, TaskOutcome.SUCCESS)
    (sent,) = proxy.queries  # prepared in this session (decision 0105) as it is first sent
    assert sent.startswith("PREPARE bfx_end_success_")
    assert " AS UPDATE bfx.execution SET executionstatus=$" in sent
    assert "FOR NO KEY UPDATE OF b" in sent and "\nEXECUTE bfx_end_success_" in sent
    assert "BEGIN" not in sent and "COMMIT" not in sent

    proxy.queries.clear()
    ended = store.end_task(ok.execution_id, TaskOutcome.SUCCESS)
    (sent,) = proxy.queries
    assert "\nEXECUTE bfx_end_success_" in sent and "PREPARE" not in sent, sent
    assert "BEGIN" not in sent and "COMMIT" not in sent
    assert (ended.status, ended.next_load_status, ended.changed) == (
        ExecutionStatus.SUCCEEDED,
        NextLoadStatus.PENDING,
        True,
    )

    store.end_task(failing.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    proxy.queries.clear()
    ended = store.end_task(late.execution_id, TaskOutcome.SUCCESS)
    guarded, *full = proxy.queries
    assert "\nEXECUTE bfx_end_success_" in guarded  # matched nothing
    assert len(full) == 2 and full[0].startswith("BEGIN;") and full[1].endswith("COMMIT"), full
    assert (ended.status, ended.next_load_status) == (
        ExecutionStatus.SUCCEEDED,
        NextLoadStatus.SKIP,
    )
    rows = {r.ExecutionID: r for r in store.executions("pipe_dag", "run-1")}
    assert (rows[ok.execution_id].ExecutionStatus, rows[ok.execution_id].NextLoadStatus) == (
        "S",
        "C",  # stamped by the final failure
    )
    assert (rows[late.execution_id].ExecutionStatus, rows[late.execution_id].NextLoadStatus) == (
        "S",
        "C",
    )


def _registered(store: CatalogStore, *tasks: str) -> None:
    """A first run of pipe_dag that registers ``tasks``' packages and succeeds (a task seen for
    the first time registers its package in its start: the guarded start never covers it)."""
    run = BatchSpec("pipe_dag", "run-0")
    for i, task in enumerate(tasks):
        started = store.start_task(TaskSpec(run, task, read_first=i == 0))
        store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("pipe_dag", "run-0", succeeded=True)


def test_a_first_task_start_is_one_round_trip(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """A task's first start in its lineage is one guarded INSERT sent outside any transaction:
    no BEGIN, no COMMIT, the server commits it; prepared once per session (decision 0121).
    Its row is the one the full path writes for the same decision."""
    store, proxy = wired
    _registered(store, "extract", "load", "publish")
    batch = BatchSpec("pipe_dag", "run-1")
    root = store.start_task(TaskSpec(batch, "extract", read_first=True))  # full path

    proxy.queries.clear()
    first = store.start_task(TaskSpec(batch, "load", lease_owner="host:1"))
    (sent,) = proxy.queries  # prepared by run-0's starts, which it did not cover (new packages)
    assert "\nEXECUTE bfx_start_first_" in sent and "PREPARE" not in sent, sent
    assert "BEGIN" not in sent and "COMMIT" not in sent

    store.engine.dispose()  # a new session prepares it in front of its first use
    proxy.queries.clear()
    second = store.start_task(TaskSpec(batch, "publish", lease_owner="host:1"))
    (sent,) = proxy.queries
    assert sent.startswith("PREPARE bfx_start_first_"), sent
    assert " AS INSERT INTO bfx.execution " in sent and "FOR NO KEY UPDATE OF b" in sent
    assert "\nEXECUTE bfx_start_first_" in sent
    assert "BEGIN" not in sent and "COMMIT" not in sent

    for started in (root, first, second):
        assert (started.status, started.next_load_status) == (
            ExecutionStatus.EXECUTING,
            NextLoadStatus.SKIP,
        )
        assert started.execution_id == started.original_execution_id == started.audit_id
        assert started.batch_execution_id == root.batch_execution_id
        assert started.lineage_id == root.lineage_id and started.attempt_number == 1
        assert (started.reason, started.log_lines, started.prior_execution_id) == (
            root.reason,
            (),
            None,
        )
    rows = {r.ExecutionID: r for r in store.executions("pipe_dag", "run-1")}
    same = (
        "ParentExecutionID", "ExecutionStatus", "NextLoadStatus", "AttemptNumber",
        "ItemFingerprint", "EndTime", "DagId", "RunId", "MapIndex", "TryNumber", "LineageID",
        "LogicalDate",
    )  # fmt: skip
    full, guarded = rows[root.execution_id], rows[first.execution_id]
    assert {k: getattr(guarded, k) for k in same} == {k: getattr(full, k) for k in same}
    assert guarded.OriginalExecutionID == guarded.AuditID == guarded.ExecutionID
    assert guarded.PackageID == first.package_id != full.PackageID
    assert guarded.ExternalExecutionID == "pipe_dag/run-1/load/-1/1"
    assert guarded.LeaseOwner == "host:1" and guarded.LeaseExpiresAt > guarded.StartTime
    assert guarded.StartTime == guarded.UpdatedAt


def test_a_start_the_guard_does_not_cover_is_read_and_decided(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """A resumed run's task with rows in the lineage: the guarded INSERT matches nothing and
    writes nothing, then the start reads, decides and writes as before (two more round trips):
    a completed task is skipped, the failed one restarts (decision 0121)."""
    store, proxy = wired
    failed_run = BatchSpec("pipe_dag", "run-0")
    root = store.start_task(TaskSpec(failed_run, "extract", read_first=True))
    store.end_task(root.execution_id, TaskOutcome.SUCCESS)
    load = store.start_task(TaskSpec(failed_run, "load"))
    store.end_task(load.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    store.end_batch("pipe_dag", "run-0", succeeded=False)
    resumed = BatchSpec("pipe_dag", "run-1")
    store.start_task(TaskSpec(resumed, "root", read_first=True))

    proxy.queries.clear()
    skipped = store.start_task(TaskSpec(resumed, "extract"))
    sent = list(proxy.queries)
    assert len(sent) == 3, sent
    assert "EXECUTE bfx_start_first_" in sent[0] and "BEGIN" not in sent[0], sent[0]
    assert sent[1].startswith("BEGIN;") and "EXECUTE bfx_task_facts_" in sent[1], sent[1]
    assert "INSERT INTO bfx.execution " in sent[2] and sent[2].rstrip().endswith("COMMIT")
    restarted = store.start_task(TaskSpec(resumed, "load"))

    assert skipped.status is ExecutionStatus.SKIPPED and skipped.lineage_id == root.lineage_id
    assert skipped.original_execution_id == root.execution_id
    assert restarted.status is ExecutionStatus.RETRYING and restarted.attempt_number == 2
    rows = store.executions("pipe_dag", "run-1")
    assert sorted(
        (r.TaskId, r.ExecutionStatus) for r in rows if r.TaskId in ("extract", "load")
    ) == [
        ("extract", "C"),
        ("load", "R"),
    ]


@pytest.mark.parametrize(
    "case", ["none (control)", "disabled", "running elsewhere", "batch skips all", "closed"]
)
def test_the_guarded_start_writes_nothing_where_the_machine_decides_otherwise(
    wired: tuple[CatalogStore, QueryRecorder], case: str
) -> None:
    """Each fact the guard checks, made false: the guarded INSERT writes nothing and the full
    path decides (decision 0121): a disabled package skips, a live lease elsewhere refuses, a
    batch that skips all skips, a closed batch is reopened."""
    store, proxy = wired
    _registered(store, "extract", "load")
    batch = BatchSpec("pipe_dag", "run-1")
    store.start_task(TaskSpec(batch, "extract", read_first=True))
    if case == "disabled":
        store.set_package("pipe_dag", "load", enabled=False)
    E = store.s.Execution
    with store.engine.begin() as conn:
        batch_id = conn.execute(
            select(E.c.ExecutionID).where(E.c.ExternalExecutionID == batch.external_id)
        ).scalar_one()
        if case == "batch skips all":
            conn.execute(update(E).where(E.c.ExecutionID == batch_id).values(ExecutionStatus="C"))
        if case == "closed":
            conn.execute(
                update(E)
                .where(E.c.ExecutionID == batch_id)
                .values(ExecutionStatus="F", NextLoadStatus="R", EndTime=E.c.StartTime)
            )
    if case == "running elsewhere":
        other = BatchSpec("pipe_dag", "run-other")
        store.start_task(TaskSpec(other, "extract", read_first=True))
        store.start_task(TaskSpec(other, "load", lease_owner="otherhost:1"))

    proxy.queries.clear()
    started = store.start_task(TaskSpec(batch, "load"))
    sent = list(proxy.queries)
    assert "bfx_start_first_" in sent[0], sent
    if case == "none (control)":
        assert len(sent) == 1 and started.status is ExecutionStatus.EXECUTING, sent
        return
    # Then the full path: the facts, (a closed batch's reopening,) the row with the COMMIT.
    assert len(sent) == (4 if case == "closed" else 3), sent
    assert sent[1].startswith("BEGIN;") and "EXECUTE bfx_task_facts_" in sent[1], sent
    assert "INSERT INTO bfx.execution " in sent[-1] and sent[-1].rstrip().endswith("COMMIT")
    expected = {
        "disabled": ExecutionStatus.SKIPPED,
        "running elsewhere": ExecutionStatus.ABORTED,
        "batch skips all": ExecutionStatus.SKIPPED,
        "closed": ExecutionStatus.EXECUTING,  # in the batch reopened as R first
    }[case]
    assert started.status is expected, started
    if case == "closed":
        rows = {r.ExecutionID: r for r in store.executions("pipe_dag", "run-1")}
        assert (rows[batch_id].ExecutionStatus, rows[batch_id].EndTime) == ("R", None)


def test_a_batch_start_is_four_round_trips(wired: tuple[CatalogStore, QueryRecorder]) -> None:
    """The first task of a new run (decision 0105): the task facts (no batch yet), the DAG
    package's lock with the one batch-start facts SELECT, the batch INSERT with the task
    facts, the task INSERT with the COMMIT. Reconciling a crashed previous batch (its writes
    are queued too) costs nothing more."""
    store, proxy = wired
    first = BatchSpec("pipe_dag", "run-0")  # registers the packages (a first sight's extra reads)
    crashed = store.start_task(TaskSpec(first, "load"))
    store.end_task(crashed.execution_id, TaskOutcome.FAILED_TRY, error_message="boom")
    # run-0 never ends: the next batch start closes it by inference (F/R).

    proxy.queries.clear()
    started = store.start_task(TaskSpec(BatchSpec("pipe_dag", "run-1"), "load", read_first=True))
    sent = list(proxy.queries)

    assert len(sent) == 4, sent
    assert sent[0].startswith("BEGIN;") and "EXECUTE bfx_task_facts_" in sent[0], sent[0]
    lock, read = sent[1].split(";\n", 1)
    assert lock.startswith("SELECT bfx.package.packageid"), sent[1]
    assert lock.endswith("FOR NO KEY UPDATE OF package"), sent[1]
    assert "EXECUTE bfx_batch_facts_1_" in read, sent[1]  # prepared by run-0's batch start
    assert sent[2].startswith("UPDATE bfx.execution ") and "INSERT INTO bfx.execution " in sent[2]
    assert "EXECUTE bfx_task_facts_" in sent[2].splitlines()[-1], sent[2]  # the facts, again
    assert "INSERT INTO bfx.execution " in sent[3] and sent[3].rstrip().endswith("COMMIT")

    rows = {r.ExecutionID: r for r in store.executions("pipe_dag")}
    old = rows[crashed.batch_execution_id]
    assert (old.ExecutionStatus, old.NextLoadStatus, old.EndTime is not None) == ("F", "R", True)
    new = rows[started.batch_execution_id]
    assert (new.ExecutionStatus, new.AttemptNumber) == ("R", 2)
    assert new.OriginalExecutionID == crashed.batch_execution_id
    row = rows[started.execution_id]
    assert (row.ExecutionStatus, row.ParentExecutionID) == ("R", started.batch_execution_id)


def test_a_batch_start_takes_one_id_however_many_rows_it_reads(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """The batch-start facts query returns a row per active task it reads (here three of an
    overlapping run); the sequence still gives it one ExecutionID, the new batch row's."""
    store, _ = wired
    r0 = BatchSpec("pipe_dag", "run-0")
    running = [store.start_task(TaskSpec(r0, f"t{n}", lease_seconds=600)) for n in range(3)]
    last = max(t.execution_id for t in running)
    started = store.start_task(TaskSpec(BatchSpec("pipe_dag", "run-1"), "t0"))
    assert started.batch_execution_id == last + 1
    assert started.execution_id == last + 2


def test_facts_queries_are_prepared_once_per_session_with_a_generic_plan(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """Decision 0105: the first task start of a session prepares the facts query in front of
    its first EXECUTE (no round trip of its own); later ones execute it by name, and the server
    plans it once (a generic plan), not at every call."""
    store, proxy = wired
    batch = BatchSpec("pipe_dag", "run-0")
    proxy.queries.clear()
    first = store.start_task(TaskSpec(batch, "t0"))
    prepare = [q for q in proxy.queries if "PREPARE bfx_task_facts_" in q]
    assert len(prepare) == 1, proxy.queries  # not again after the batch start
    assert "FOR NO KEY UPDATE OF b" in prepare[0] and "$1" in prepare[0], prepare[0]
    for n in range(1, 6):
        store.end_task(store.start_task(TaskSpec(batch, f"t{n}")).execution_id, TaskOutcome.SUCCESS)
    assert not [q for q in proxy.queries[-10:] if "PREPARE" in q], proxy.queries[-10:]
    with store.engine.connect() as conn:  # the pool's one connection: the same session
        plans = conn.execute(
            text(
                "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE name LIKE 'bfx_task_facts_%'"
            )
        ).all()
    assert len(plans) == 1, plans
    (_, generic, custom) = plans[0]
    assert (generic, custom) == (7, 0), plans  # t0's start ran it twice: around its batch
    assert store.end_task(first.execution_id, TaskOutcome.SUCCESS).changed


def test_a_compiled_statement_keeps_the_key_of_its_prepared_statement(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """Decision 0119: the key under which a session finds the prepared facts query (its text
    and its ~30 constants) is made at the first call and kept by the compiled statement, not
    sorted again at every call; it is the key the session prepared the statement under."""
    store, _ = wired
    batch = BatchSpec("pipe_dag", "run-0")
    for n in range(3):
        store.end_task(store.start_task(TaskSpec(batch, f"t{n}")).execution_id, TaskOutcome.SUCCESS)
    facts = task_facts(store)
    key = facts._options.prepared_key
    assert key is not None and key[0] is facts.sql
    assert all(not name.startswith("p_") for name, _ in key[1]) and len(key[1]) > 10, key[1]
    with store.engine.connect() as conn:  # the pool's one connection: the same session
        prepared = conn.connection.dbapi_connection.bfx_prepared  # type: ignore[union-attr]
        assert key in prepared and prepared[key].startswith("EXECUTE bfx_task_facts_")


def test_a_session_that_lost_its_prepared_statements_prepares_them_again(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """A pooler's ``DISCARD ALL`` (or ``DEALLOCATE ALL``) drops the session's prepared
    statements: the EXECUTE fails with SQLSTATE 26000, and the transition is re-run, preparing
    them again; nothing of the failed attempt is kept."""
    store, proxy = wired
    batch = BatchSpec("pipe_dag", "run-0")
    store.start_task(TaskSpec(batch, "t0"))
    with store.engine.connect() as conn:  # the pool's one connection: the same session
        conn.execute(text("DEALLOCATE ALL"))
        conn.commit()
    proxy.queries.clear()
    started = store.start_task(TaskSpec(batch, "t1"))
    assert any("PREPARE bfx_task_facts_" in q for q in proxy.queries), proxy.queries
    rows = [r for r in store.executions("pipe_dag", "run-0") if r.TaskId == "t1"]
    assert [(r.ExecutionID, r.ExecutionStatus) for r in rows] == [(started.execution_id, "E")]


def test_a_failing_queued_write_fails_its_transaction_and_leaves_nothing(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """A queued write that violates a constraint fails at the COMMIT it travels with, as an
    ``IntegrityError`` the transaction wrapper handles; the write queued before it in the same
    transaction is not kept, and the pooled connection serves the next transaction."""
    store, _ = wired
    batch = BatchSpec("pipe_dag", "run-2")
    started = store.start_task(TaskSpec(batch, "t"))
    E, P = store.s.Execution, store.s.Package

    def work(conn: object) -> None:
        write(conn, update(E).where(E.c.ExecutionID == started.execution_id).values(TryNumber=99))  # type: ignore[arg-type]
        write(conn, insert(P).values(PackageName="pipe_dag", DagId="pipe_dag"))  # type: ignore[arg-type]

    with pytest.raises(IntegrityError):
        store.transaction(work, "test")
    assert _try_number(store, started.execution_id) == 1
    assert store.end_task(started.execution_id, TaskOutcome.SUCCESS).changed


def test_a_rollback_after_a_flushed_write_undoes_it(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    store, proxy = wired
    started = store.start_task(TaskSpec(BatchSpec("pipe_dag", "run-3"), "t"))
    E = store.s.Execution

    class Stop(Exception):
        pass

    def work(conn: object) -> None:
        write(conn, update(E).where(E.c.ExecutionID == started.execution_id).values(TryNumber=7))  # type: ignore[arg-type]
        seen = conn.execute(  # type: ignore[attr-defined]
            select(E.c.TryNumber).where(E.c.ExecutionID == started.execution_id)
        ).scalar_one()
        assert seen == 7  # the queued write went first
        raise Stop

    proxy.queries.clear()
    with pytest.raises(Stop):
        store.transaction(work, "test")
    assert proxy.queries[-1].strip() == "ROLLBACK"
    assert _try_number(store, started.execution_id) == 1


def test_autocommit_connections_send_no_begin(wired: tuple[CatalogStore, QueryRecorder]) -> None:
    """VACUUM cannot run in a transaction: a connection asked for AUTOCOMMIT gets none."""
    store, proxy = wired
    engine: Engine = store.engine
    proxy.queries.clear()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM bfx.package"))
    assert [q.strip() for q in proxy.queries] == ["VACUUM bfx.package"]


def _try_number(store: CatalogStore, execution_id: int) -> int:
    """The row's TryNumber as committed (read on a connection of its own)."""
    E = store.s.Execution
    with store.engine.connect() as conn:
        return int(
            conn.execute(select(E.c.TryNumber).where(E.c.ExecutionID == execution_id)).scalar_one()
        )


def test_a_new_dags_first_task_is_four_round_trips(
    wired: tuple[CatalogStore, QueryRecorder],
) -> None:
    """A DAG seen for the first time (decision 0108): the batch-start facts read also says
    that its package is missing and takes its id, the task facts the same of the task's
    package; both packages are INSERTs queued in front of the next statement. The same four
    round trips as any run's first task (was 13)."""
    store, proxy = wired
    proxy.queries.clear()
    started = store.start_task(TaskSpec(BatchSpec("new_dag", "run-0"), "load", read_first=True))
    sent = list(proxy.queries)

    assert len(sent) == 4, sent
    assert sent[0].startswith("BEGIN;") and "bfx_task_facts_" in sent[0], sent[0]
    assert "bfx_batch_facts_1_" in sent[1], sent[1]
    package, batch, facts = sent[2].split(";\n", 2)
    assert package.startswith("INSERT INTO bfx.package "), sent[2]
    assert batch.startswith("INSERT INTO bfx.execution "), sent[2]
    assert "EXECUTE bfx_task_facts_" in facts, sent[2]
    package, task, commit = sent[3].split(";\n", 2)
    assert package.startswith("INSERT INTO bfx.package "), sent[3]
    assert task.startswith("INSERT INTO bfx.execution "), sent[3]
    assert commit.strip() == "COMMIT;" or commit.strip() == "COMMIT", sent[3]

    rows = {r.ExecutionID: r for r in store.executions("new_dag", "run-0")}
    assert rows[started.execution_id].PackageID == started.package_id
    assert rows[started.batch_execution_id].ExecutionStatus == "E"


@pytest.fixture
def psycopg3(pg_url: str) -> Iterator[tuple[Engine, Engine]]:
    """A deployed catalog's engine on psycopg 3 (one pooled connection), and a psycopg2
    engine that reads what it wrote from another session."""
    url = make_url(pg_url).set(drivername="postgresql+psycopg")
    deploy = create_catalog_engine(url)
    upgrade(deploy)
    deploy.dispose()
    engine = create_catalog_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=0)
    reader = create_catalog_engine(pg_url)
    try:
        yield engine, reader
    finally:
        engine.dispose()
        reader.dispose()


def test_a_guarded_end_on_psycopg3_commits_on_its_own(psycopg3: tuple[Engine, Engine]) -> None:
    """psycopg 3 does not fold (decision 0101): the guarded end runs under SQLAlchemy's
    AUTOCOMMIT isolation level instead (decision 0120). The end is durable (another engine
    reads it at once), the connection returns to the pool in its default isolation level, a
    failed batch still makes the guard fall through to the full path, and a transaction on the
    same pooled connection afterwards is a real transaction (its rollback undoes its write)."""
    engine, reader = psycopg3
    store = CatalogStore(engine)
    batch = BatchSpec("pg3_dag", "run-1")
    ok, late, failing = (store.start_task(TaskSpec(batch, t)) for t in ("a", "b", "c"))
    ended = store.end_task(ok.execution_id, TaskOutcome.SUCCESS)
    assert (ended.status, ended.next_load_status) == (
        ExecutionStatus.SUCCEEDED,
        NextLoadStatus.PENDING,
    )
    E = store.s.Execution
    with reader.connect() as conn:
        status = conn.execute(
            select(E.c.ExecutionStatus).where(E.c.ExecutionID == ok.execution_id)
        ).scalar_one()
    assert status == "S"
    with engine.connect() as conn:
        assert conn.get_isolation_level() != "AUTOCOMMIT"
    store.end_task(failing.execution_id, TaskOutcome.FINAL_FAILURE, error_message="boom")
    ended = store.end_task(late.execution_id, TaskOutcome.SUCCESS)
    assert (ended.status, ended.next_load_status) == (
        ExecutionStatus.SUCCEEDED,
        NextLoadStatus.SKIP,
    )
    # A rolled back transaction on that pooled connection leaves nothing behind: it is
    # a transaction, not autocommit.
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(update(E).where(E.c.ExecutionID == ok.execution_id).values(AuditID=-1))
        raise RuntimeError("rolled back")
    with reader.connect() as conn:
        audit = conn.execute(
            select(E.c.AuditID).where(E.c.ExecutionID == ok.execution_id)
        ).scalar_one()
    assert audit == ok.audit_id


def test_a_guarded_first_start_on_psycopg3_commits_on_its_own(
    psycopg3: tuple[Engine, Engine],
) -> None:
    """psycopg 3 binds on the server (no folding, no PREPARE of ours): the guarded first start
    (decision 0121) is one INSERT ... SELECT under SQLAlchemy's AUTOCOMMIT isolation level, its
    values cast to their columns' types, durable at once; a start it does not cover falls
    through to the full path."""
    engine, reader = psycopg3
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    store = CatalogStore(engine)
    run_0 = BatchSpec("pg3_first", "run-0")
    for task in ("a", "b"):
        started = store.start_task(TaskSpec(run_0, task, read_first=task == "a"))
        store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("pg3_first", "run-0", succeeded=True)
    run_1 = BatchSpec("pg3_first", "run-1")
    store.start_task(TaskSpec(run_1, "a", read_first=True))

    sent.clear()
    first = store.start_task(TaskSpec(run_1, "b", lease_owner="host:1"))
    (statement,) = sent
    assert statement.startswith("INSERT INTO bfx.execution ") and " SELECT " in statement
    assert first.status is ExecutionStatus.EXECUTING and first.attempt_number == 1
    E = store.s.Execution
    with reader.connect() as conn:
        row = conn.execute(select(E).where(E.c.ExecutionID == first.execution_id)).one()
    assert (row.ExecutionStatus, row.NextLoadStatus, row.LeaseOwner) == ("E", "C", "host:1")
    assert row.AuditID == row.OriginalExecutionID == row.ExecutionID
    assert row.LeaseExpiresAt > row.StartTime and row.MapIndex == -1
    with engine.connect() as conn:
        assert conn.get_isolation_level() != "AUTOCOMMIT"

    store.end_task(first.execution_id, TaskOutcome.FAILED_TRY, error_message="boom")
    store.set_package("pg3_first", "c", enabled=False)
    sent.clear()
    skipped = store.start_task(TaskSpec(run_1, "c"))  # disabled: the guard does not hold
    assert skipped.status is ExecutionStatus.SKIPPED
    assert sent[0].startswith("INSERT INTO bfx.execution ") and len(sent) > 1, sent
