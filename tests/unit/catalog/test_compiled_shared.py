"""Decision 0118: a statement of the hot path is compiled once per process for a kind of
dialect, before the fork for the forked task processes, and a task's own engine uses it as it is
(``catalog/compiled.py``, ``catalog/warm.py``). On the real engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from airflow_provider_bfx.catalog import compiled as compiled_mod
from airflow_provider_bfx.catalog import facts, tasks
from airflow_provider_bfx.catalog.checkpoints import RETURN_VALUE_NODE
from airflow_provider_bfx.catalog.codes import CheckpointType, ExecutionStatus
from airflow_provider_bfx.catalog.compiled import CompiledStatement, dialect_signature
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.revision import is_current
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.catalog.warm import DIALECT_URLS, build_statements


@pytest.fixture
def fresh_process_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Any, Any]]:
    """An empty process-wide cache, as in a process that has compiled nothing yet."""
    shared: dict[Any, Any] = {}
    monkeypatch.setattr(compiled_mod, "_SHARED", shared)
    yield shared


def _warmed(dialect_name: str) -> None:
    """What ``warm()`` does for one dialect: a never-connected engine of its driver."""
    engine = create_engine(DIALECT_URLS[dialect_name])
    try:
        build_statements(Catalog(engine, check_schema=False))
    finally:
        engine.dispose()


def _constructions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``CompiledStatement`` built from now on, by its SQL."""
    built: list[str] = []
    original = CompiledStatement.__init__

    def counting(self: CompiledStatement, statement: Any, *args: Any, **kwargs: Any) -> None:
        original(self, statement, *args, **kwargs)
        built.append(self.sql)

    monkeypatch.setattr(CompiledStatement, "__init__", counting)
    return built


def _named(constants: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in constants.items() if not k.startswith("%(")}


def test_a_task_start_and_end_after_warm_compile_nothing(
    fresh_process_cache: dict[Any, Any], store: CatalogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the forking process's ``warm()``, a task process's first task start and task end,
    on its own engine, build no compiled statement: the warmed ones are used (a task start
    that stops writing a column with a default, or a new column with a default that it does not
    write, fails here; a column without one is written NULL when left out, decision 0119).
    The task is its run's first, so its start also starts the batch (decision 0119), and its
    gate reads its upstreams' rows. Its end is a success's guarded UPDATE; a sibling's failed
    try is read, decided and written (decision 0120)."""
    earlier = BatchSpec("dag_w", "run_0")  # the DAG and its tasks are known from a run before
    for task in ("t0", "t1"):
        done = store.start_task(TaskSpec(earlier, task, lease_owner="host:1"))
        store.end_task(done.execution_id, TaskOutcome.SUCCESS)
    store.end_batch("dag_w", "run_0", succeeded=True)
    fresh_process_cache.clear()  # a new task process: nothing compiled, nothing bound
    store._own.clear()
    _warmed(store.dialect)
    warmed = len(fresh_process_cache)
    batch = BatchSpec("dag_w", "run_1")
    built = _constructions(monkeypatch)
    # What a routed task's gate and end send: the schema check, the evidence read, the
    # upstream read (one upstream, then three), the start (with its batch's), the return
    # value's checkpoint (written, then overwritten), the end.
    assert is_current(store.engine)
    evidence = store.runs_awaiting_evidence("dag_w", "run_1", task_id="t1")
    assert [(r.run_id, r.settled) for r in evidence] == [("run_0", True)]
    assert store.latest_task_records("dag_w", "run_0", ["t0"])[0].task_id == "t0"
    three = store.latest_task_records("dag_w", "run_0", ["t0", "t1", "t9"])
    assert [r.task_id for r in three] == ["t0", "t1"]
    started = store.start_task(TaskSpec(batch, "t1", lease_owner="host:1"))
    assert started.status is ExecutionStatus.EXECUTING
    for value in (1, 2):
        store.write_checkpoint(
            execution_id=started.execution_id,
            scope_key=started.scope_key,
            node=RETURN_VALUE_NODE,
            payload=value,
        )
    ended = store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    assert ended.changed and ended.status is ExecutionStatus.SUCCEEDED
    # A failed try is read, decided and written (no guarded end for a failure, 0120).
    other = store.start_task(TaskSpec(batch, "t0", lease_owner="host:1"))
    failed = store.end_task(other.execution_id, TaskOutcome.FAILED_TRY, error_message="boom")
    assert failed.changed and failed.status is ExecutionStatus.FAILED
    assert built == []
    (checkpoint,) = store.read_checkpoints(
        started.scope_key, CheckpointType.NODE_OUTPUT, RETURN_VALUE_NODE
    )
    assert checkpoint.payload == 2
    # ... and the statements it used are the warmed ones, bound to this engine's dialect.
    assert facts.task_facts(store).sql is facts.task_facts(store).sql
    assert len(fresh_process_cache) >= warmed
    for name in (
        "task_facts_compiled",
        "task_end_guarded_success",
        "task_end_facts_compiled",
        "task_end_update",
        "insert_error",
    ):
        ours = store.own(name, lambda: None)
        assert ours is not None, name
        assert ours.dialect is store.engine.dialect
        shared = fresh_process_cache[(name, dialect_signature(store.engine.dialect))]
        assert ours.sql is shared.sql and ours is not shared


def test_without_warm_a_task_start_compiles_its_statements(
    fresh_process_cache: dict[Any, Any], store: CatalogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the test above: the same calls in a process that did not warm build
    the batch start's statements, the task-start facts, the row's INSERT, the upstream read
    and the task end's statements."""
    batch = BatchSpec("dag_w", "run_1")
    built = _constructions(monkeypatch)
    started = store.start_task(TaskSpec(batch, "t1", lease_owner="host:1"))
    store.latest_task_records("dag_w", "run_1", ["t1"])
    store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    assert len(built) >= 8, built


def test_the_warmed_statements_compile_as_a_connected_engine_compiles_them(
    fresh_process_cache: dict[Any, Any], store: CatalogStore
) -> None:
    """What the never-connected dialect compiled is, statement by statement, what this
    connected engine's dialect compiles (text, parameter order, constants, processors, rows):
    the server's version and the other settings a first connect fills in change none of it."""
    with store.engine.connect():
        pass  # the dialect has met its server
    _warmed(store.dialect)
    connected = store.engine.dialect
    assert connected.server_version_info is not None
    compared = 0
    for (name, signature), shared in fresh_process_cache.items():
        assert signature == dialect_signature(connected), name
        own = CompiledStatement(shared.statement, connected, column_keys=shared.column_keys)
        assert own.sql == shared.sql, name
        for attr in ("_order", "_required", "columns", "_direct_ok"):
            assert getattr(own, attr) == getattr(shared, attr), (name, attr)
        # SQLAlchemy also lists an anonymous parameter under a key made of its object's id,
        # which differs from one compilation to the next; the SQL names it ``param_<n>``.
        assert _named(own._constants) == _named(shared._constants), name
        assert [n for n, _ in own._bind_procs] == [n for n, _ in shared._bind_procs], name
        assert [i for i, _ in own._result_procs] == [i for i, _ in shared._result_procs], name
        compared += 1
    assert compared >= 5


def test_a_dialect_that_compiles_otherwise_gets_its_own(
    tmp_path: Path, fresh_process_cache: dict[Any, Any]
) -> None:
    """A dialect whose settings change the compiled text (shorter labels) is not handed the
    statement another dialect compiled."""
    plain = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    short = create_engine(f"sqlite:///{tmp_path / 'b.db'}", label_length=8)
    try:
        a, b = Catalog(plain, check_schema=False), Catalog(short, check_schema=False)
        assert dialect_signature(plain.dialect) != dialect_signature(short.dialect)
        ours, theirs = facts.task_facts(a), facts.task_facts(b)
        assert ours.sql != theirs.sql
        assert len(fresh_process_cache) == 2
        # Two engines of one kind share one compiled statement, each bound to its dialect.
        again = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
        c = Catalog(again, check_schema=False)
        assert facts.task_facts(c).sql is ours.sql
        assert facts.task_facts(c).dialect is again.dialect
        assert tasks.end_update(c).sql is tasks.end_update(a).sql
        again.dispose()
    finally:
        plain.dispose()
        short.dispose()
