"""Statements compiled once and sent on the DBAPI cursor (decision 0108), on the real engines:
the same rows, the same stored values and the same errors as ``Connection.execute``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError

from airflow_provider_bfx.catalog.compiled import CompiledStatement
from airflow_provider_bfx.catalog.facts import task_facts, task_facts_params, task_facts_query
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec

WHEN = datetime(2026, 12, 3, 8, 30, 1, 250)


def _started(store: CatalogStore) -> tuple[TaskSpec, int]:
    batch = BatchSpec("dag_c", "run_1")
    store.start_batch(batch)
    spec = TaskSpec(batch, "t1", lease_owner="host:1")
    started = store.start_task(spec)
    return TaskSpec(batch, "t1", try_number=2, lease_owner="host:2"), started.execution_id


def test_the_facts_rows_are_those_connection_execute_returns(store: CatalogStore) -> None:
    """Every column of the task-start facts, types processed (the lease expiry is a datetime
    on SQLite too), for a task with an active row of another try."""
    spec, _ = _started(store)
    params = task_facts_params(spec)
    with store.engine.begin() as conn:
        ours = task_facts(store).rows(conn, params)
        core = conn.execute(task_facts_query(store), params).all()
    # next_id: PostgreSQL's nextval() gives each execution an id of its own.
    assert [r._replace(next_id=None) for r in ours] == [
        tuple(None if k == "next_id" else v for k, v in r._mapping.items()) for r in core
    ]
    assert ours[0]._fields == tuple(core[0]._fields)
    assert isinstance(ours[0].a_expires, datetime)


def test_a_written_row_reads_back_as_written(store: CatalogStore) -> None:
    """Bind processing: a datetime with microseconds, a NULL, strings, round-trip exactly."""
    E = store.s.Execution
    _, execution_id = _started(store)
    update = CompiledStatement(
        E.update()
        .where(E.c.ExecutionID == bindparam("p_id"))
        .values(EndTime=bindparam("p_when"), LeaseOwner=None),
        store.engine.dialect,
    )
    with store.engine.begin() as conn:
        assert update.execute(conn, {"p_id": execution_id, "p_when": WHEN}) == 1
    with store.engine.begin() as conn:
        row = conn.execute(select(E).where(E.c.ExecutionID == execution_id)).one()
    assert (row.EndTime, row.LeaseOwner) == (WHEN, None)


def test_parameters_are_checked_by_name(store: CatalogStore) -> None:
    facts = task_facts(store)
    params = task_facts_params(TaskSpec(BatchSpec("d", "r"), "t"))
    with pytest.raises(ValueError, match="missing \\['p_item'\\]"):
        facts.parameters({k: v for k, v in params.items() if k != "p_item"})
    with pytest.raises(ValueError, match="unknown \\['p_typo'\\]"):
        facts.parameters({**params, "p_typo": 1})


def test_a_driver_error_is_sqlalchemys_and_undoes_the_transaction(store: CatalogStore) -> None:
    """A duplicate key through ``write`` (queued on PostgreSQL, at once on SQLite) raises the
    ``IntegrityError`` the transaction wrapper retries on, and nothing of it is kept."""
    P = store.s.Package
    _started(store)
    with store.engine.begin() as conn:
        taken = conn.execute(select(P).where(P.c.TaskId == "t1")).one()
    keys = ("PackageName", "DagId", "TaskId", "IsBatch", "IsEnabled", "CreatedAt", "UpdatedAt")
    again = CompiledStatement(insert(P), store.engine.dialect, column_keys=keys)
    values = {k: getattr(taken, k) for k in keys}
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        again.write(conn, values)
        conn.execute(select(P.c.PackageID)).all()  # a queued write travels with this
    with store.engine.begin() as conn:
        assert len(conn.execute(select(P).where(P.c.TaskId == "t1")).all()) == 1


def test_core_listeners_still_see_the_statement(store: CatalogStore) -> None:
    """A ``before_execute`` listener is handed Core statements: with one, the statement goes
    through ``Connection.execute`` (and its rows read alike)."""
    spec, _ = _started(store)
    seen: list[Any] = []

    def listen(conn: Connection, clause: Any, *args: Any) -> None:
        seen.append(clause)

    facts = task_facts(store)
    event.listen(store.engine, "before_execute", listen)
    try:
        with store.engine.begin() as conn:
            assert not facts.direct(conn)
            rows = facts.rows(conn, task_facts_params(spec))
    finally:
        event.remove(store.engine, "before_execute", listen)
    assert facts.statement in seen
    assert rows[0].x_id is None and rows[0].a_id is not None
    with store.engine.begin() as conn:
        assert facts.direct(conn)


def test_a_text_finished_per_call_runs_through_connection_execute(store: CatalogStore) -> None:
    """An expanding parameter's text is finished by ``Connection.execute`` at each call: such
    a statement is compiled (its rows still read by attribute) but never sent as compiled."""
    E = store.s.Execution
    query = select(E.c.ExecutionID.label("ExecutionID")).where(
        E.c.ExecutionID.in_(bindparam("ids", expanding=True))
    )
    stmt = CompiledStatement(query, store.engine.dialect)
    assert "POSTCOMPILE" in stmt.sql
    with store.engine.begin() as conn:
        assert not stmt.direct(conn)
        assert stmt.rows(conn, {"ids": [1, 2]}) == []
