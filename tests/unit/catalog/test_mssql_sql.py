"""The store's SQL for SQL Server, checked without a SQL Server.

How the SQL is obtained, and why this way. The store builds its statements from the engine's
dialect: ``bfx``-qualified tables, ``WITH (UPDLOCK, ROWLOCK)`` hints instead of ``FOR UPDATE``,
no ``next_id`` in the facts query and ``INSERT ... OUTPUT inserted.ExecutionID`` followed by an
``UPDATE`` for the self-referencing columns. Capturing what a *SQLite* store executes and
compiling that for SQL Server would check none of these branches, and calling a few query
builders on a mock engine would miss every statement built inline in a transition (and every
path that only a real row leads to). So the store under test is a real ``CatalogStore`` whose
engine has SQL Server's dialect (the ``mssql+pymssql`` dialect of
``sqlalchemy.create_mock_engine``) and whose transactions run on a real SQLite catalog:
:class:`MssqlDialectOverSqlite` hands the store a SQLite connection with the execution option
``schema_translate_map={"bfx": None}`` (the catalog's table and column names are the same on both
engines; only the schema differs). The store's own code therefore takes every SQL Server branch,
with real facts read back from real rows, and a ``before_execute`` listener on the SQLite engine
captures every Core statement it executes. Each captured statement is then compiled with the SQL
Server dialect and checked. No store code is patched.

The workload covers every store method and every path of DESIGN.md §4 (fresh, repeated, skip,
compute-only restart, retry, refused, expired lease, RERUN with discarded checkpoints, batch start
fresh / resumed / reconciled / concurrent / disabled / reopened, every task outcome, batch end
both ways, the expiry scan, leases, checkpoints, row counts, package settings, history), and it
runs twice: on the SQL Server twin and on a plain SQLite store. The decisions and the resulting
rows must be identical, so the SQL Server branches are shown to write what the others write.

What this cannot show: how SQL Server itself locks, and whether it accepts the statements (no
server here). The checks below are the T-SQL rules the compiled text can be held to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    Select,
    create_mock_engine,
    event,
    make_url,
    select,
)
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BooleanClauseList,
    ClauseElement,
    Label,
)
from sqlalchemy.sql.selectable import Exists

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import (
    CheckpointType,
    NextLoadStatus,
    VersionMismatchPolicy,
)
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.schema import SCHEMA_NAME, build_schema
from airflow_provider_bfx.catalog.store import (
    BatchSpec,
    CatalogStateError,
    CatalogStore,
    TaskSpec,
)

MSSQL = create_mock_engine("mssql+pymssql://", lambda *args, **kwargs: None).dialect
assert MSSQL.name == "mssql"

MSSQL_SCHEMA = build_schema("mssql")
TABLES = {
    t.name: t
    for t in (
        MSSQL_SCHEMA.Package,
        MSSQL_SCHEMA.Execution,
        MSSQL_SCHEMA.ExecutionError,
        MSSQL_SCHEMA.ExecutionCheckpoint,
        MSSQL_SCHEMA.ExecutionRowCount,
    )
}
LOCK_HINT = "WITH (UPDLOCK, ROWLOCK)"


class MssqlDialectOverSqlite:
    """The store's engine: SQL Server's dialect for building SQL, a SQLite catalog for running it.

    ``CatalogStore`` uses exactly ``engine.dialect``, ``engine.begin()`` and ``engine.url``."""

    def __init__(self, sqlite_engine: Engine) -> None:
        self.dialect = MSSQL
        self.url = make_url("mssql+pymssql://catalog-under-test/bfx")
        self.sqlite = sqlite_engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.sqlite.begin() as conn:
            yield conn.execution_options(schema_translate_map={SCHEMA_NAME: None})


@dataclass
class Captured:
    step: str
    stmt: ClauseElement
    params: list[dict[str, Any]]
    _compiled: Any = None

    def compiled(self) -> Any:
        if self._compiled is None:
            column_keys = list(self.params[0]) if self.params else None
            self._compiled = self.stmt.compile(dialect=MSSQL, column_keys=column_keys)
        return self._compiled

    def expanded(self, row: dict[str, Any] | None = None) -> Any:
        """SQL text and values as the driver receives them (``IN`` lists expanded). Queries
        the store builds once take their values as bound parameters, so they come from the
        captured row."""
        if row is None and self.params:
            row = self.params[0]
        return self.compiled().construct_expanded_state(row or None)

    @property
    def sql(self) -> str:
        """The compiled text on one line (the compiler breaks lines before FROM and WHERE)."""
        return " ".join(self.expanded().statement.split())

    def __str__(self) -> str:
        return f"[{self.step}] {self.sql}"


OUTSIDE = "(outside the workload)"


@dataclass
class Recorder:
    """Names the store call that runs, and collects what it executes."""

    statements: list[Captured] = field(default_factory=list)
    calls: list[tuple[str, list[Captured]]] = field(default_factory=list)
    driver_sql: list[str] = field(default_factory=list)
    step: str = OUTSIDE

    def attach(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_execute")
        def _capture(conn: Any, stmt: Any, multiparams: Any, params: Any, options: Any) -> None:
            if self.step == OUTSIDE:
                return  # the test reading rows back, not the store
            if isinstance(stmt, ClauseElement):
                rows = [dict(p) for p in multiparams or ()] or ([dict(params)] if params else [])
                self.statements.append(Captured(self.step, stmt, rows))
            else:
                self.driver_sql.append(str(stmt))

    def call(self, step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.step = step
        first = len(self.statements)
        try:
            return fn(*args, **kwargs)
        finally:
            self.calls.append((step, self.statements[first:]))
            self.step = OUTSIDE


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 2, 0, 0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


DAG = "w_dag"


def workload(store: CatalogStore, clock: FakeClock, rec: Recorder) -> list[tuple[str, Any]]:
    """Every store method, every path; asserts that each path really was taken. Returns the
    results, in order, as plain data."""
    out: list[tuple[str, Any]] = []

    def call(step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = rec.call(step, fn, *args, **kwargs)
        out.append((step, _plain(result)))
        return result

    def spec(run: str, task: str, **kw: Any) -> TaskSpec:
        return TaskSpec(BatchSpec(DAG, run), task, **kw)

    E, S, F, C, A, R, D = "E", "S", "F", "C", "A", "R", "D"

    def codes(result: Any) -> tuple[str, str]:
        return (result.status.value, result.next_load_status.value)

    call("set_package", store.set_package, DAG, retry_limit=5, max_resume_age=86_400)

    # Run r1: fresh batch, every task outcome, final failure, reopen, batch end failed.
    a = call("start_task", store.start_task, spec("r1", "t_a", lease_owner="me"))
    assert (a.run, codes(a), a.repeated) == (Run.RUN, (E, C), False)
    again = call("start_task", store.start_task, spec("r1", "t_a", lease_owner="me"))
    assert again.repeated and again.execution_id == a.execution_id
    assert call("renew_lease", store.renew_lease, a.execution_id, "me", 60) is True
    assert call("renew_lease", store.renew_lease, a.execution_id, "other", 60) is False
    # Deferred: the lease passes to Airflow, and the resumed try takes it back (decision 0082).
    assert call("park", store.park, a.execution_id, "me", "deferred") is True
    resumed = call("start_task", store.start_task, spec("r1", "t_a", lease_owner="me"))
    assert resumed.repeated and resumed.run is Run.RUN
    node = CheckpointType.NODE_OUTPUT
    for rows in (1, 2):  # insert, then overwrite
        call(
            "write_checkpoint",
            store.write_checkpoint,
            execution_id=a.execution_id,
            scope_key=a.scope_key,
            node=keys.COPY_NODE,
            payload={"rows": rows},
            operator_fingerprint="v1",
        )
    call(
        "write_checkpoint",
        store.write_checkpoint,
        execution_id=a.execution_id,
        scope_key=a.scope_key,
        node="each",
        payload=["k1"],
        checkpoint_type=CheckpointType.FOREACH_PROGRESS,
        iteration_key="k1",
    )
    (cp,) = call("read_checkpoints", store.read_checkpoints, a.scope_key, node)
    assert cp.payload == {"rows": 2}
    assert len(call("read_checkpoints", store.read_checkpoints, a.scope_key, node, "x")) == 0
    call("log_row_counts", store.log_row_counts, a.execution_id, [("dbo.t", "inserted", 10)])
    call(
        "log_row_counts",
        store.log_row_counts,
        a.execution_id,
        [("dbo.t", "inserted", 10), ("dbo.t", "updated", 2)],
    )
    ended = call("end_task", store.end_task, a.execution_id, TaskOutcome.SUCCESS)
    assert (codes(ended), ended.changed) == ((S, "P"), True)
    ended = call("end_task", store.end_task, a.execution_id, TaskOutcome.SUCCESS)
    assert ended.changed is False

    b1 = call("start_task", store.start_task, spec("r1", "t_b", operator_fingerprint="v1"))
    call(
        "write_checkpoint",
        store.write_checkpoint,
        execution_id=b1.execution_id,
        scope_key=b1.scope_key,
        node=keys.COPY_NODE,
        payload={"landed": True},
        operator_fingerprint="v1",
    )
    ended = call(
        "end_task",
        store.end_task,
        b1.execution_id,
        TaskOutcome.FAILED_TRY,
        error_type="ValueError",
        error_message="boom",
        error_detail="Traceback ...",
    )
    assert codes(ended) == (F, D)
    b2 = call(
        "start_task", store.start_task, spec("r1", "t_b", try_number=2, operator_fingerprint="v1")
    )
    assert (b2.run, b2.status.value, b2.audit_id) == (Run.RUN, D, b1.audit_id)
    ended = call("end_task", store.end_task, b2.execution_id, TaskOutcome.FINAL_FAILURE)
    assert (codes(ended), ended.batch_failed) == ((F, D), True)
    c = call("start_task", store.start_task, spec("r1", "t_c"))  # reopens the failed batch
    assert c.run is Run.RUN
    ended = call("end_task", store.end_task, c.execution_id, TaskOutcome.SKIPPED_BY_LOGIC)
    assert codes(ended) == (C, "P")
    with pytest.raises(CatalogStateError):
        rec.call("end_task", store.end_task, 999_999, TaskOutcome.SUCCESS)
    closed = call("end_batch", store.end_batch, DAG, "r1", succeeded=False)
    assert (codes(closed), closed.changed) == ((F, R), True)
    closed = call("end_batch", store.end_batch, DAG, "r1", succeeded=False)
    assert closed.changed is False

    # Run r2: resumed batch; skip, RERUN with discarded checkpoints, expired lease, refused.
    a2 = call("start_task", store.start_task, spec("r2", "t_a"))
    assert (a2.run, a2.status.value, a2.prior_execution_id) == (Run.SKIP, C, a.execution_id)
    b3 = call(
        "start_task",
        store.start_task,
        spec("r2", "t_b", operator_fingerprint="v2", policy=VersionMismatchPolicy.RERUN),
    )
    assert (b3.run, b3.status.value) == (Run.RUN, R)
    assert call("read_checkpoints", store.read_checkpoints, b3.scope_key, node) == []
    call("end_task", store.end_task, b3.execution_id, TaskOutcome.SUCCESS)
    d1 = call(
        "start_task", store.start_task, spec("r2", "t_d", lease_owner="ghost", lease_seconds=30)
    )
    clock.advance(120)
    d2 = call("start_task", store.start_task, spec("r2", "t_d", try_number=2))
    assert (d2.run, d2.status.value, d2.prior_execution_id) == (Run.RUN, R, d1.execution_id)
    call("end_task", store.end_task, d2.execution_id, TaskOutcome.SUCCESS)
    e1 = call("start_task", store.start_task, spec("r2", "t_e", lease_seconds=600))
    e2 = call("start_task", store.start_task, spec("r2", "t_e", try_number=2))
    assert (e2.run, codes(e2)) == (Run.REFUSE, (A, "P"))
    call("end_task", store.end_task, e1.execution_id, TaskOutcome.SUCCESS)
    f1 = call("start_task", store.start_task, spec("r2", "t_f", lease_seconds=30))
    call(
        "write_checkpoint",
        store.write_checkpoint,
        execution_id=f1.execution_id,
        scope_key=f1.scope_key,
        node=keys.COPY_NODE,
        payload=None,
    )
    clock.advance(60)
    (expired,) = call("expire_leases", store.expire_leases)
    assert (expired.execution_id, expired.next_load_status) == (
        f1.execution_id,
        NextLoadStatus.COMPUTE_ONLY,
    )
    assert call("expire_leases", store.expire_leases) == []
    assert call("end_task", store.end_task, f1.execution_id, TaskOutcome.SUCCESS).changed is False
    closed = call("end_batch", store.end_batch, DAG, "r2", succeeded=True)
    assert codes(closed) == (S, "P")

    # r3 left open with no live task; r4 reconciles it; r5 overlaps r4 (live task).
    g = call("start_task", store.start_task, spec("r3", "t_a"))
    assert (g.run, g.status.value) == (Run.RUN, E)
    call("end_task", store.end_task, g.execution_id, TaskOutcome.SUCCESS)
    r4 = call("start_batch", store.start_batch, BatchSpec(DAG, "r4"))
    assert call("start_batch", store.start_batch, BatchSpec(DAG, "r4")) == r4
    h = call("start_task", store.start_task, spec("r4", "t_h", lease_seconds=600))
    assert h.run is Run.RUN
    r5 = call("start_batch", store.start_batch, BatchSpec(DAG, "r5", full_rerun=True))
    assert r5 != r4

    # Disabled packages: a task's, then the DAG's.
    call("set_package", store.set_package, DAG, "t_i", enabled=False)
    i = call("start_task", store.start_task, spec("r5", "t_i"))
    assert (i.run, i.status.value) == (Run.SKIP, C)
    call("set_package", store.set_package, DAG, enabled=False)
    j = call("start_task", store.start_task, spec("r6", "t_a"))
    assert (j.run, j.status.value) == (Run.SKIP, C)
    closed = call("end_batch", store.end_batch, DAG, "r6", succeeded=True)
    assert (closed.status.value, closed.changed) == (C, False)
    call("set_package", store.set_package, DAG, enabled=True, max_resume_age=None)
    assert call("end_batch", store.end_batch, DAG, "never-ran", succeeded=True) is None

    history = call("executions", store.executions, DAG)
    out.append(("history", [tuple(r) for r in history]))
    call("executions", store.executions, DAG, "r1")
    latest = call("latest_task_records", store.latest_task_records, DAG, "r2", ["t_b", "t_x"])
    assert [(r.task_id, r.execution_id) for r in latest] == [("t_b", b3.execution_id)]
    batches = {r.RunId: r for r in history if r.TaskId is None}
    assert (batches["r1"].ExecutionStatus, batches["r2"].ExecutionStatus) == (F, S)
    assert batches["r2"].AttemptNumber == 2  # resumed r1
    assert batches["r3"].ExecutionStatus == S and batches["r3"].EndTime is not None  # reconciled
    assert batches["r5"].LineageID != batches["r4"].LineageID  # concurrent: a fresh lineage
    assert (batches["r6"].ExecutionStatus, batches["r6"].NextLoadStatus) == (C, "P")
    return out


def _deploy(url: str) -> Engine:
    engine = create_catalog_engine(url)
    upgrade(engine)
    return engine


def _all_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    sqlite = build_schema("sqlite")
    tables = [
        sqlite.Package,
        sqlite.Execution,
        sqlite.ExecutionError,
        sqlite.ExecutionCheckpoint,
        sqlite.ExecutionRowCount,
    ]
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in tables
        }


@dataclass
class Run_:
    recorder: Recorder
    results: list[tuple[str, Any]]
    rows: dict[str, list[tuple[Any, ...]]]


_RUNS: dict[str, Run_] = {}


@pytest.fixture
def mssql_run(sqlite_url: str) -> Run_:
    """The workload on the SQL Server twin, run once per module (in the catalog of the first test
    that asks for it): every check below reads the same captured statements."""
    if "run" not in _RUNS:
        engine = _deploy(sqlite_url)
        try:
            recorder = Recorder()
            recorder.attach(engine)
            clock = FakeClock()
            twin: Any = MssqlDialectOverSqlite(engine)
            store = CatalogStore(twin, clock=clock, check_schema=False)
            assert store.dialect == "mssql" and store.s.schema == SCHEMA_NAME
            results = workload(store, clock, recorder)
            _RUNS["run"] = Run_(recorder, results, _all_rows(engine))
        finally:
            engine.dispose()
    return _RUNS["run"]


@pytest.fixture
def statements(mssql_run: Run_) -> list[Captured]:
    assert len(mssql_run.recorder.statements) > 100
    return mssql_run.recorder.statements


# ---------------------------------------------------------------------------------------------
# The SQL Server branches decide and write exactly what the SQLite store does
# ---------------------------------------------------------------------------------------------


def test_mssql_branches_write_the_same_rows_as_sqlite(mssql_run: Run_, tmp_path: Any) -> None:
    engine = _deploy(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        clock = FakeClock()
        store = CatalogStore(engine, clock=clock)
        reference = workload(store, clock, Recorder())
        assert [step for step, _ in mssql_run.results] == [step for step, _ in reference]
        for (step, got), (_, want) in zip(mssql_run.results, reference, strict=True):
            assert got == want, step
        assert mssql_run.rows == _all_rows(engine)
    finally:
        engine.dispose()


def test_workload_reaches_every_kind_of_statement(statements: list[Captured]) -> None:
    kinds = set()
    for c in statements:
        if isinstance(c.stmt, (Insert, Update, Delete)):
            kinds.add((type(c.stmt).__name__, str(getattr(c.stmt.table, "name", ""))))
        elif isinstance(c.stmt, Select):
            kinds.add(("Select", ""))
        else:
            kinds.add((type(c.stmt).__name__, ""))
    assert kinds == {
        ("Select", ""),
        ("Insert", "Package"),
        ("Update", "Package"),
        ("Insert", "Execution"),
        ("Update", "Execution"),
        ("Insert", "ExecutionError"),
        ("Insert", "ExecutionCheckpoint"),
        ("Update", "ExecutionCheckpoint"),
        ("Delete", "ExecutionCheckpoint"),
        ("Insert", "ExecutionRowCount"),
    }, "the store executed a kind of statement this file does not know (no DDL is expected)"


def test_no_driver_sql_but_the_engines_own_begin(mssql_run: Run_) -> None:
    # Raw strings bypass the dialect; the only ones are the SQLite engine's BEGIN IMMEDIATE.
    assert set(mssql_run.recorder.driver_sql) <= {"BEGIN IMMEDIATE"}


# ---------------------------------------------------------------------------------------------
# Every captured statement, compiled for SQL Server
# ---------------------------------------------------------------------------------------------


def test_every_statement_compiles_for_mssql(statements: list[Captured]) -> None:
    failures = []
    for c in statements:
        try:
            c.compiled()
        except Exception as exc:  # collected and reported below: the test fails with all of them
            failures.append(f"[{c.step}] {type(c.stmt).__name__}: {exc}")
    assert not failures, "\n".join(failures)


_TABLE_NAMES = "|".join(re.escape(n) for n in TABLES)
_UNQUALIFIED = re.compile(rf"(?<!{SCHEMA_NAME}\.)\[(?:{_TABLE_NAMES})\]")
_TARGET = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(?!\()(\S+)")


def test_every_table_is_bfx_qualified(statements: list[Captured]) -> None:
    for c in statements:
        sql = c.sql
        assert not _UNQUALIFIED.search(sql), f"unqualified catalog table in {c}"
        targets = _TARGET.findall(sql)
        assert targets, f"no table in {c}"
        for target in targets:
            assert target.startswith(f"{SCHEMA_NAME}.["), f"{target!r} in {c}"
            assert target[len(SCHEMA_NAME) + 2 : -1] in TABLES, f"{target!r} in {c}"


_FORBIDDEN = {
    "LIMIT": re.compile(r"\bLIMIT\b", re.I),
    "OFFSET": re.compile(r"\bOFFSET\b", re.I),
    "FOR UPDATE": re.compile(r"\bFOR\s+UPDATE\b", re.I),
    "RETURNING": re.compile(r"\bRETURNING\b", re.I),
    "nextval": re.compile(r"\bnextval\b", re.I),
    "pg_get_serial_sequence": re.compile(r"pg_get_serial_sequence", re.I),
    ":: cast": re.compile(r"::"),
    "NULLS FIRST/LAST": re.compile(r"\bNULLS\s+(FIRST|LAST)\b", re.I),
    "|| concatenation": re.compile(r"\|\|"),
    "boolean literal": re.compile(r"\b(TRUE|FALSE)\b", re.I),
    "double-quoted identifier": re.compile(r'"'),
    "backtick identifier": re.compile(r"`"),
    "ILIKE": re.compile(r"\bILIKE\b", re.I),
}


def test_no_postgresql_or_sqlite_syntax(statements: list[Captured]) -> None:
    for c in statements:
        for what, pattern in _FORBIDDEN.items():
            assert not pattern.search(c.sql), f"{what} in {c}"
        for el in visitors.iterate(c.stmt):
            if isinstance(el, Select):
                # The SQL Server dialect renders with_for_update() as nothing at all: a lock the
                # store asked for that way would silently not be taken.
                assert el._for_update_arg is None, f"with_for_update() in {c}"


def test_limits_render_as_top(statements: list[Captured]) -> None:
    """A limit, in a statement or in one of its subqueries (the batch start reads the latest
    batch as a subquery of its facts query), renders as ``TOP n``."""
    limited = 0
    for c in statements:
        selects = [el for el in visitors.iterate(c.stmt) if isinstance(el, Select)]
        limits = sum(el._limit_clause is not None for el in selects)
        if not limits:
            continue
        limited += 1
        assert len(re.findall(r"SELECT TOP \d+ ", c.sql)) == limits, c
        assert " LIMIT " not in c.sql, c
    assert limited, "the workload reads the latest batch with a limit"


def test_execution_inserts_leave_identity_to_the_server(mssql_run: Run_) -> None:
    """IDs are IDENTITY on SQL Server: an INSERT may not name one (that needs IDENTITY_INSERT),
    an Execution INSERT reads its ID back with OUTPUT inserted.ExecutionID, and a row that refers
    to itself (OriginalExecutionID/LineageID/AuditID) gets them from an UPDATE of that row, by its
    ID, right after the INSERT in the same transaction."""
    identity = {name: next(iter(t.primary_key.columns)).name for name, t in TABLES.items()}
    self_updates = 0
    for step, stmts in mssql_run.recorder.calls:
        for n, c in enumerate(stmts):
            if not isinstance(c.stmt, Insert):
                continue
            table = c.stmt.table.name
            cols = re.search(r"\((.*?)\)", c.sql)
            assert cols and f"[{identity[table]}]" not in cols.group(1), f"identity in {c}"
            if table != "Execution":
                continue
            assert " OUTPUT inserted.[ExecutionID] VALUES " in c.sql, c
            params = c.compiled().params
            if params["OriginalExecutionID"] is not None and params["AuditID"] is not None:
                continue
            following = stmts[n + 1] if n + 1 < len(stmts) else None
            assert following is not None and isinstance(following.stmt, Update), (
                f"[{step}] an Execution INSERT that refers to itself is not followed by an UPDATE"
            )
            assert re.fullmatch(
                r"UPDATE bfx\.\[Execution\] SET (\[(OriginalExecutionID|LineageID|AuditID)\]="
                r":\w+(, )?)+ WHERE bfx\.\[Execution\]\.\[ExecutionID\] = :\w+",
                following.sql,
            ), following
            self_updates += 1
    assert self_updates >= 15


def test_transitions_lock_the_batch_row_first(mssql_run: Run_) -> None:
    """Every transition's first statement takes UPDLOCK, ROWLOCK on the batch row (DESIGN.md
    §4: "with row locks on the batch row"): a SELECT, or a task end's guarded UPDATE, which
    locks it in its EXISTS before it writes (decision 0120)."""
    checked = guarded = 0
    for step, stmts in mssql_run.recorder.calls:
        if step not in ("start_task", "end_task", "end_batch"):
            continue
        first = stmts[0]
        if step == "end_task" and isinstance(first.stmt, Update):
            assert first.sql.startswith("UPDATE bfx.[Execution] SET "), first
            flat = " ".join(first.sql.split())
            assert f"EXISTS (SELECT b.[ExecutionID] FROM bfx.[Execution] AS b {LOCK_HINT} " in flat
            guarded += 1
            checked += 1
            continue
        assert isinstance(first.stmt, Select), first
        wanted = {
            "start_task": f"FROM bfx.[Execution] AS b {LOCK_HINT} JOIN ",
            "end_task": f"JOIN bfx.[Execution] AS b {LOCK_HINT} ON ",
            "end_batch": f"FROM bfx.[Execution] {LOCK_HINT} WHERE ",
        }[step]
        assert wanted in first.sql, first
        checked += 1
    assert checked >= 30
    assert guarded >= 5


def test_batch_start_locks_the_dag_package_row(mssql_run: Run_) -> None:
    """A first task of a run and batch starts serialise on the DAG package row."""

    def batch_inserted(stmts: list[Captured]) -> bool:
        return any(
            isinstance(c.stmt, Insert)
            and c.stmt.table.name == "Execution"
            and c.params == []
            and "[TaskId]" not in c.sql
            for c in stmts
        )

    starts = [
        stmts
        for step, stmts in mssql_run.recorder.calls
        if step in ("start_batch", "start_task") and batch_inserted(stmts)
    ]
    assert len(starts) >= 6
    for stmts in starts:
        locks = [c for c in stmts if f"FROM bfx.[Package] {LOCK_HINT} WHERE" in c.sql]
        assert len(locks) == 1, "\n".join(map(str, stmts))


def test_lock_hints_only_on_batch_and_package_rows(statements: list[Captured]) -> None:
    hinted = set()
    for c in statements:
        for match in re.finditer(rf"(bfx\.\[\w+\](?: AS \w+)?) {re.escape(LOCK_HINT)}", c.sql):
            hinted.add(match.group(1))
        assert c.sql.count("UPDLOCK") == len(
            re.findall(rf"bfx\.\[\w+\](?: AS \w+)? {re.escape(LOCK_HINT)}", c.sql)
        ), c
    assert hinted == {"bfx.[Execution] AS b", "bfx.[Execution]", "bfx.[Package]"}


def test_flags_are_integers(statements: list[Captured]) -> None:
    """IsEnabled/IsBatch are SMALLINT 0/1: written and compared as integers, never booleans."""
    flags = 0
    for c in statements:
        compiled = c.compiled()
        for bind in compiled.binds.values():
            assert not isinstance(bind.type, Boolean), f"boolean parameter {bind.key} in {c}"
        for row in c.params:
            for key, value in row.items():
                assert not isinstance(value, bool), f"{key}={value!r} in {c}"
        for name, value in c.expanded().parameters.items():
            assert not isinstance(value, bool), f"{name}={value!r} in {c}"
            if name in ("IsEnabled", "IsBatch"):
                assert value in (0, 1) and type(value) is int, f"{name}={value!r} in {c}"
                flags += 1
    assert flags >= 4


def test_no_order_by_in_subqueries_without_top(statements: list[Captured]) -> None:
    for c in statements:
        for el in visitors.iterate(c.stmt):
            if isinstance(el, Select) and el is not c.stmt and el._order_by_clauses:
                assert el._limit_clause is not None, f"ORDER BY in a subquery without TOP: {c}"


def _predicates_in_select_list(stmt: ClauseElement) -> list[str]:
    found = []
    for el in visitors.iterate(stmt):
        if not isinstance(el, Select):
            continue
        for col in el.selected_columns:
            inner = col.element if isinstance(col, Label) else col
            if isinstance(inner, Exists) or (
                isinstance(inner, (BinaryExpression, BooleanClauseList))
                and isinstance(inner.type, Boolean)
            ):
                found.append(getattr(col, "name", None) or type(inner).__name__)
    return found


def test_no_predicate_in_a_select_list(statements: list[Captured]) -> None:
    """T-SQL has no boolean values: ``SELECT EXISTS (...) AS x`` or ``SELECT a = b AS x`` is a
    syntax error on SQL Server ("Incorrect syntax near the keyword 'EXISTS'"); a predicate can
    only be returned as ``CASE WHEN EXISTS (...) THEN 1 ELSE 0 END``. The SQL Server dialect
    renders an ``exists()`` column as it is, so the store must not select one."""
    offenders: dict[str, set[str]] = {}
    example = ""
    for c in statements:
        for name in _predicates_in_select_list(c.stmt):
            offenders.setdefault(c.step, set()).add(name)
            if not example:
                at = c.sql.find(" EXISTS (")
                example = f"[{c.step}] ...{c.sql[max(0, at - 40) : at + 70]}..."
    assert not offenders, (
        "predicates selected as columns (invalid T-SQL), by store call: "
        + "; ".join(f"{step}: {sorted(names)}" for step, names in sorted(offenders.items()))
        + f"\ne.g. {example}"
    )


def test_bound_values_are_plain(statements: list[Captured]) -> None:
    """Every value the store binds is a plain str/int/float/datetime/None (no enum members, no
    booleans, no dicts): what any SQL Server driver sends without guessing."""
    for c in statements:
        for row in c.params or [{}]:
            for name, value in c.expanded(row or None).parameters.items():
                assert value is None or type(value) in (str, int, float, datetime), (
                    f"{name}={value!r} ({type(value).__name__}) in {c}"
                )
