"""Fewer round trips to PostgreSQL (psycopg2): BEGIN travels with the transaction's first
statement, and writes whose result the transition does not read travel with the next
statement or with the COMMIT. No Airflow here; no decision either (decision 0101).

A task start was four round trips on PostgreSQL: ``BEGIN``, the locking facts SELECT, the
INSERT, ``COMMIT`` (psycopg2 sends ``BEGIN`` as a query of its own, and every statement waits
for its answer). The machine decides in Python between the SELECT and the INSERT, so two
round trips is the floor: ``BEGIN; SELECT ... FOR UPDATE`` and ``INSERT ...; COMMIT``.

How, with psycopg2 and nothing else:

* the engine runs the DBAPI connection in autocommit (``isolation_level="AUTOCOMMIT"``), so
  psycopg2 sends no ``BEGIN`` and ``commit()`` sends nothing; this module sends them instead,
  inside the transaction SQLAlchemy keeps as before (its ``begin``/``commit``/``rollback``
  events);
* the first statement after SQLAlchemy's ``begin`` is sent as ``BEGIN; <statement>`` in one
  simple query (psycopg2 interpolates parameters on the client, ``mogrify``, so the text is
  exactly what it would have sent; it returns the last statement's result);
* :func:`write` queues a statement whose result is not read (the task start's INSERT, a task
  end's UPDATE): it runs through ``conn.execute`` as usual, but the connection's cursor (a
  psycopg2 ``connection_factory`` subclass) records the text instead of sending it; the queue
  is sent in front of the next statement, or with ``COMMIT`` at the commit, in the order
  written. An error in a queued write (a unique violation) therefore
  surfaces at that statement or at the commit, as a normal SQLAlchemy ``DBAPIError``: the
  transaction wrapper re-runs the transition, as for any other statement;
* a rollback (or a connection returned to the pool) sends ``ROLLBACK`` when the server says a
  transaction is open (``transaction_status``), and drops the queue.

Statements built once per store and marked with :func:`prepared` (the facts queries) are
prepared once per session (``PREPARE``, in front of their first use) and then sent as
``EXECUTE name(args)``, with a generic plan (``SET LOCAL plan_cache_mode``): PostgreSQL
planned the task-start facts query afresh on every call, ~1.5 ms of planning for ~0.3 ms of
execution (decision 0105). A session that lost them (a pooler's ``DISCARD ALL``) answers
SQLSTATE 26000: the connection forgets them and the transaction wrapper re-runs the
transition, which prepares again.

Any other engine (SQLite, SQL Server, psycopg 3) runs :func:`write` at once, and a
:func:`prepared` statement as any other.
"""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert

S = TypeVar("S", bound=Executable)

_FOLD = "bfx_fold"  # engine-level marker in Connection.info (per DBAPI connection record)
_BEGIN = "bfx_begin_pending"
_QUEUE = "bfx_queued"
_PREPARE = "bfx_prepare"  # execution option: the label of a statement prepared per session
_ONE = "bfx_one_statement"  # execution option: no BEGIN, the server commits the statement
_ARG = "p_"  # bound parameters named so are the prepared statement's arguments
_GENERIC = "SET LOCAL plan_cache_mode = force_generic_plan;\n"
_PREPARE_SINCE = 120000  # plan_cache_mode exists from PostgreSQL 12


def prepared(statement: S, label: str) -> S:
    """``statement`` (built once per store) to be prepared once per session on a folding
    engine, and executed by name with a generic plan (module docstring). Its bound parameters
    named ``p_...`` are the arguments; any other parameter is a constant of the statement
    (written into the prepared text), so every call must bind the same values to those."""
    return statement.execution_options(**{_PREPARE: label})


def foldable(url_driver: str, url_backend: str) -> bool:
    """Whether an engine for this URL can fold BEGIN and queued writes (psycopg2 only)."""
    return url_backend == "postgresql" and url_driver == "psycopg2"


def install(engine: Engine) -> Engine:
    """Fold BEGIN and queued writes into fewer round trips on ``engine`` (an autocommit
    psycopg2 engine, see the module docstring)."""

    @event.listens_for(engine, "engine_connect")
    def _mark(conn: Connection) -> None:
        conn.info[_FOLD] = True

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT" or options.get(_ONE):
            # Asked for by the caller (VACUUM, CREATE DATABASE, :func:`autocommit`): no
            # transaction at all.
            conn.info[_BEGIN] = False
            conn.info.pop(_QUEUE, None)
            return
        conn.info[_BEGIN] = True
        conn.info[_QUEUE] = []

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _before(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        if getattr(cursor.connection, "bfx_capture", None) is not None:
            return statement, params  # recorded by :func:`write`, not sent
        label = None if many or context is None else context.execution_options.get(_PREPARE)
        if label and cursor.connection.server_version >= _PREPARE_SINCE:
            return _prefix(conn) + _by_name(cursor, statement, params, label, context), None
        prefix = _prefix(conn)
        if not prefix:
            return statement, params
        if many:  # executemany: send the prefix on its own first
            _send(cursor, prefix)
            return statement, params
        text = cursor.mogrify(statement, params).decode(_encoding(cursor))
        return prefix + text, None

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        dbapi = cursor.connection
        if getattr(dbapi, "bfx_pending", None) is not None:
            key, entry = dbapi.bfx_pending
            dbapi.bfx_prepared[key] = entry  # the PREPARE in front of it ran
            dbapi.bfx_pending = None

    @event.listens_for(engine, "handle_error")
    def _error(ctx: Any) -> None:
        dbapi = getattr(getattr(ctx.execution_context, "cursor", None), "connection", None)
        forget_failed(dbapi, ctx.original_exception)

    @event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        if _QUEUE not in conn.info:
            return  # an autocommit connection: nothing to commit
        if conn.info.get(_BEGIN) and not conn.info[_QUEUE]:
            conn.info[_BEGIN] = False
            return  # nothing was sent: nothing to commit
        prefix = _prefix(conn)
        dbapi: Any = conn.connection.dbapi_connection
        with dbapi.cursor() as cursor:
            _send(cursor, prefix + "COMMIT")

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Connection) -> None:
        conn.info[_BEGIN] = False
        if _QUEUE in conn.info:
            conn.info[_QUEUE] = []
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None:
            _rollback_open(dbapi)

    @event.listens_for(engine.pool, "reset")
    def _reset(dbapi: Any, record: Any, state: Any = None) -> None:
        _rollback_open(dbapi)
        if not dbapi.closed and not dbapi.autocommit:
            dbapi.autocommit = True  # a raw connection (DbApiHook.get_conn) turned it off

    return engine


def autocommit(conn: Connection) -> None:
    """Run what ``conn`` sends outside any transaction: the server commits each statement on
    its own (a transition of one statement, decision 0120). On a folding engine the DBAPI
    connection autocommits already, so only the ``BEGIN`` is left out, without SQLAlchemy's
    isolation-level round trip through the dialect and back at check-in; any other engine
    gets SQLAlchemy's ``AUTOCOMMIT`` isolation level."""
    if conn.info.get(_FOLD):
        conn.execution_options(**{_ONE: True})
    else:
        conn.execution_options(isolation_level="AUTOCOMMIT")


def forget_failed(dbapi: Any, exc: BaseException) -> None:
    """After a failed statement on ``dbapi`` (a folding connection, else nothing to do): the
    PREPARE that travelled with it may or may not have run, so it is not recorded (a new name
    next time); a session that lost its statements (SQLSTATE 26000) forgets them all. Called
    by the ``handle_error`` event, and by :mod:`.compiled`, which sends past it."""
    if dbapi is None or not hasattr(dbapi, "bfx_prepared"):
        return
    dbapi.bfx_pending = None
    if getattr(exc, "pgcode", None) == _GONE:
        dbapi.bfx_prepared.clear()


def capture_start(conn: Connection) -> list[str] | None:
    """Begin recording what the folding cursor would send instead of sending it (a queued
    :func:`write`); None when ``conn`` does not fold, or holds no transaction: execute then.
    :func:`capture_end` queues what was recorded."""
    if not conn.info.get(_FOLD) or _QUEUE not in conn.info:
        return None
    dbapi: Any = conn.connection.dbapi_connection
    if dbapi is None:
        return None
    captured: list[str] = []
    dbapi.bfx_capture = captured
    return captured


def capture_end(conn: Connection, captured: list[str] | None, *, keep: bool) -> None:
    """Stop recording; the recorded statements join the queue when ``keep``."""
    if captured is None:
        return
    conn.connection.dbapi_connection.bfx_capture = None  # type: ignore[union-attr]
    if keep:
        conn.info[_QUEUE] += captured


def write(conn: Connection, statement: Executable, params: dict[str, Any] | None = None) -> None:
    """Execute ``statement``, whose result the caller does not read: on a folding engine it
    is queued and sent with the next statement or the COMMIT (module docstring).

    The statement goes through ``conn.execute`` as usual (SQLAlchemy's compiled cache, type
    processing, ``IN`` expansion); only the driver's send is replaced: the folding cursor
    records the exact text psycopg2 would have sent (``mogrify``) instead of sending it."""
    captured = capture_start(conn)
    if captured is None:
        conn.execute(statement, params)
        return
    if isinstance(statement, Insert) and not statement._inline:
        statement = statement.inline()  # no implicit RETURNING of a server-made id
    done = False
    try:
        conn.execute(statement, params)
        done = True
    finally:
        capture_end(conn, captured, keep=done)


def connection_factory() -> Any:
    """The psycopg2 connection class of a folding engine: its cursors can record a statement
    instead of sending it (``connect_args={"connection_factory": ...}``)."""
    from psycopg2.extensions import connection, cursor  # type: ignore[import-untyped]

    class FoldingCursor(cursor):  # type: ignore[misc]
        def execute(self, query: Any, vars: Any = None) -> None:
            captured = self.connection.bfx_capture
            if captured is None:
                super().execute(query, vars)
                return
            captured.append(self.mogrify(query, vars).decode(_encoding(self)))

    class FoldingConnection(connection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bfx_capture: list[str] | None = None
            self.cursor_factory = FoldingCursor
            # Statements prepared in this session: (text, constants) -> EXECUTE template.
            self.bfx_prepared: dict[Any, str] = {}
            self.bfx_pending: tuple[Any, str] | None = None
            self.bfx_serial = 0
            self.bfx_token = secrets.token_hex(3)  # names unique across sessions (a pooler)

    return FoldingConnection


_GONE = "26000"  # invalid_sql_statement_name: this session does not know the name


def _by_name(cursor: Any, statement: str, params: Any, label: str, context: Any) -> str:
    """``EXECUTE`` of ``statement`` prepared in this session, with its ``PREPARE`` in front
    the first time. Keyed by the statement and its constants; each ``PREPARE`` gets a name of
    its own, so that one whose fate is unknown (its query failed) is never prepared twice
    under one name. Confirmed by the ``after_cursor_execute`` event.

    A compiled statement (:mod:`.compiled`) binds the same constants at every call, so its
    context keeps the key once made (``prepared_key``, checked against the text sent): the
    constants of the task-start facts query are ~30 parameters to sort at every call."""
    dbapi = cursor.connection
    kept = getattr(context, "prepared_key", None)
    if kept is not None and kept[0] is statement:
        key = kept
    else:
        consts = tuple(sorted((k, v) for k, v in params.items() if not k.startswith(_ARG)))
        key = (statement, consts)
        if hasattr(context, "prepared_key"):
            context.prepared_key = key
    entry = dbapi.bfx_prepared.get(key)
    head = ""
    if entry is None:
        args = sorted(k for k in params if k.startswith(_ARG))
        dbapi.bfx_serial += 1
        name = f"bfx_{label}_{dbapi.bfx_token}_{dbapi.bfx_serial}"
        places = {k: _as_is(f"${n}") for n, k in enumerate(args, 1)}
        body = cursor.mogrify(statement, {**params, **places}).decode(_encoding(cursor))
        head = f"PREPARE {name} AS {body};\n"
        call = f"EXECUTE {name}" + (f"({', '.join(f'%({k})s' for k in args)})" if args else "")
        entry = call
        dbapi.bfx_pending = (key, entry)
    text: str = cursor.mogrify(entry, params).decode(_encoding(cursor))
    return head + _GENERIC + text


def _as_is(text: str) -> Any:
    from psycopg2.extensions import AsIs  # type: ignore[import-untyped]

    return AsIs(text)


def _prefix(conn: Connection) -> str:
    """``BEGIN;`` if the transaction has not been begun on the server, then the queued writes;
    both are consumed."""
    parts = []
    if conn.info.get(_BEGIN):
        conn.info[_BEGIN] = False
        parts.append("BEGIN")
    queued = conn.info.get(_QUEUE)
    if queued:
        parts += queued
        conn.info[_QUEUE] = []
    return "".join(f"{p};\n" for p in parts)


def _send(cursor: Any, text: str) -> None:
    """One simple query, outside SQLAlchemy's execute: its driver error becomes the
    ``DBAPIError`` SQLAlchemy would have raised (so the transaction wrapper classifies it)."""
    import psycopg2  # type: ignore[import-untyped]

    try:
        cursor.execute(text)
    except psycopg2.Error as exc:
        raise DBAPIError.instance(text, None, exc, psycopg2.Error) from exc


def _rollback_open(dbapi: Any) -> None:
    """``ROLLBACK`` when the server holds a transaction (or a failed one) for ``dbapi``."""
    from psycopg2.extensions import (  # type: ignore[import-untyped]
        TRANSACTION_STATUS_IDLE,
        TRANSACTION_STATUS_UNKNOWN,
    )

    status = dbapi.info.transaction_status
    if status in (TRANSACTION_STATUS_IDLE, TRANSACTION_STATUS_UNKNOWN) or dbapi.closed:
        return
    with dbapi.cursor() as cursor:
        cursor.execute("ROLLBACK")


def _encoding(cursor: Any) -> str:
    from psycopg2.extensions import encodings  # type: ignore[import-untyped]

    return str(encodings.get(cursor.connection.encoding, "utf-8"))
