"""The hot path's statements, compiled once per catalog and sent on the DBAPI cursor. No
Airflow here; no decision either (decision 0108).

A task start and a task end each run two or three statements that a store builds once
(the facts queries, the Execution INSERT, the task end's UPDATE). Through
``Connection.execute`` every call of one of them still paid SQLAlchemy's per-execution work:
the compiled-cache lookup, a new execution context, ``construct_params`` over every bind of a
~170-column query, the bind and result processing machinery and a ``Row`` per result row;
~0.15-0.2 ms per statement on this machine, a third of a SQLite task start and as much as a
PostgreSQL round trip. What differs from one call to the next is only the parameters' values.

So a :class:`CompiledStatement` is the SQLAlchemy Core statement (still the one source of the
SQL, for every engine), compiled once for the engine's dialect; what each call needs is worked
out once too: the constants' values, which bind and result values need the type's processor
(a ``DateTime`` on SQLite, the ``UtcDateTime`` decorator), the parameter order of a positional
driver, a named tuple for the rows. A call is then: merge the parameters, process them, send the
text on the connection's DBAPI cursor, fetch, process the few columns that need it.

What ``Connection.execute`` did around the send is kept, so everything listening still sees
every statement: the engine's ``before_cursor_execute`` listeners run first and may rewrite the
text (decision 0101's folding and 0105's ``PREPARE``/``EXECUTE`` on PostgreSQL; the
benchmark's probe), then ``after_cursor_execute``; a driver error goes through SQLAlchemy's own
error handling (``Connection._handle_dbapi_exception``: the ``DBAPIError`` subclass the
transaction wrapper classifies, a dropped connection invalidated, the ``handle_error`` event).
Not kept: the engine's ``echo`` logging of these statements.

Where the compiled text would not be what ``Connection.execute`` sends, the statement goes
through ``Connection.execute`` as before (same rows, attribute access alike): a connection of
another dialect than the one compiled for, or with a ``schema_translate_map`` (the SQL Server
twin of ``tests/unit/catalog/test_mssql_sql.py``), Core-level ``before_execute`` listeners (they
are handed the Core statement), a dialect that types its binds before each execute
(``bind_typing`` ``SETINPUTSIZES``: SQL Server's pyodbc), or a text that is finished per call
(an expanding or literal-execute parameter, such as SQL Server's ``TOP``). PostgreSQL
(psycopg2) and SQLite take the compiled path.

:meth:`CompiledStatement.write` is :func:`.pipeline.write` for a compiled statement: queued on a
folding engine, executed at once elsewhere.

Compiled once per *process*, not per engine (decision 0118). A task process creates its own
engine, so its dialect object is new and every statement used to be compiled again in every task
process: 10 statements, 28 ms of CPU per routed task in a real deployment, the task-start facts
query alone 13 ms. What a compiled statement holds depends on the dialect's class and a few of
its settings (:func:`dialect_signature`), not on the object or the server it connected to; so
:func:`compiled` keeps each statement per (name, signature) for the process (:data:`_SHARED`),
and a catalog gets a view of it bound to its own dialect object (:meth:`CompiledStatement.bound_to`:
nothing compiled again). The process that forks task processes compiles the hot path's
statements before it forks (:mod:`.warm`), for a dialect that never connected: the settings a
first connect changes (the server's version, ``default_schema_name``, hstore support) are left
out of the signature because none of them changes what these statements compile to; a test
compiles every warmed statement for a connected PostgreSQL and SQLite dialect and compares.
"""

from __future__ import annotations

import copy
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert

from airflow_provider_bfx.catalog import pipeline

Processor = Callable[[Any], Any]


class _Context:
    """What the cursor listeners read of an execution context: its execution options
    (:func:`.pipeline.prepared`'s label), and the key under which :mod:`.pipeline` finds the
    statement prepared in a session (the same at every call: its constants do not change)."""

    __slots__ = ("execution_options", "prepared_key")

    def __init__(self, options: dict[str, Any]) -> None:
        self.execution_options = options
        self.prepared_key: tuple[str, Any] | None = None


class CompiledStatement:
    """``statement`` compiled once for ``dialect`` (module docstring). ``column_keys``: the
    parameter names an INSERT or UPDATE is executed with, as ``Connection.execute`` would
    compile it for a parameter dict with those keys. ``label`` names the row class."""

    def __init__(
        self,
        statement: Executable,
        dialect: Dialect,
        *,
        column_keys: Sequence[str] | None = None,
        label: str = "Row",
    ) -> None:
        if isinstance(statement, Insert) and not statement._inline:
            statement = statement.inline()  # no implicit RETURNING: an INSERT's id is known
        self.statement = statement
        self.column_keys: tuple[str, ...] | None = (
            tuple(column_keys) if column_keys is not None else None
        )
        self._dialect = dialect
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
        )
        # A text finished per call (an expanding or literal-execute parameter: SQL Server's
        # TOP n) is never sent as compiled here: Connection.execute finishes it.
        self._direct_ok = (
            dialect.bind_typing is not BindTyping.SETINPUTSIZES
            and "POSTCOMPILE" not in compiled.string
        )
        self.sql: str = compiled.string
        self._options = _Context(dict(statement.get_execution_options()))
        binds = compiled.binds  # type: ignore[attr-defined]
        # Every parameter with its constant value (None for one the caller binds).
        self._constants: dict[str, Any] = {
            name: None if b.required else b.effective_value for name, b in binds.items()
        }
        self._names = frozenset(self._constants)
        self._required = frozenset(name for name, b in binds.items() if b.required)
        self._bind_procs: tuple[tuple[str, Processor], ...] = tuple(
            (name, proc)
            for name, b in binds.items()
            if (proc := b.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )
        order = compiled.positiontup  # type: ignore[attr-defined]
        self._order: tuple[str, ...] | None = tuple(order) if compiled.positional else None
        # A SELECT's columns, or an INSERT's RETURNING columns.
        found: Any = getattr(statement, "selected_columns", None)
        columns = list(found or getattr(statement, "exported_columns", ()))
        self.columns: tuple[str, ...] = tuple(c.name for c in columns)
        self._row: Any = namedtuple(label, self.columns) if columns else None  # type: ignore[misc]
        procs = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
        self._result_procs: tuple[tuple[int, Processor], ...] = tuple(
            (i, p) for i, p in enumerate(procs) if p is not None
        )

    def parameters(self, params: dict[str, Any]) -> Any:
        """The driver's parameters for ``params`` (names as bound in the statement): the
        constants merged in, the type processors applied, in order for a positional driver."""
        if not self._required <= params.keys() or not params.keys() <= self._names:
            missing = sorted(self._required - params.keys())
            unknown = sorted(params.keys() - self._names)
            raise ValueError(f"parameters missing {missing}, unknown {unknown}: {self.sql}")
        values = {**self._constants, **params}
        for name, proc in self._bind_procs:
            values[name] = proc(values[name])
        if self._order is None:
            return values
        return tuple(values[name] for name in self._order)

    def direct(self, conn: Connection) -> bool:
        """Whether ``conn`` takes the compiled path (else ``Connection.execute``: module
        docstring)."""
        return (
            self._direct_ok
            and conn.dialect is self._dialect
            and not conn.dispatch.before_execute
            and "schema_translate_map" not in conn.get_execution_options()
        )

    @property
    def dialect(self) -> Dialect:
        """The dialect object whose connections take the compiled path (:meth:`direct`)."""
        return self._dialect

    def bound_to(self, dialect: Dialect) -> CompiledStatement:
        """This statement for a catalog whose engine has ``dialect`` (of the same
        :func:`dialect_signature`): the compiled text, parameters and row class are shared, only
        the dialect object that :meth:`direct` recognises is ``dialect``."""
        if dialect is self._dialect:
            return self
        view = copy.copy(self)
        view._dialect = dialect
        return view

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Run the SELECT in ``conn``'s transaction and return its rows (named tuples, or
        SQLAlchemy's rows on the ``Connection.execute`` path: both read by attribute)."""
        if not self.direct(conn):
            return list(conn.execute(self.statement, params).all())
        cursor = self._send(conn, params)
        try:
            raw = cursor.fetchall()
        finally:
            cursor.close()
        row = self._row
        assert row is not None, "rows() of a statement with no result columns"
        if not self._result_procs:
            return [row._make(r) for r in raw]
        out = []
        for r in raw:
            values = list(r)
            for i, proc in self._result_procs:
                values[i] = proc(values[i])
            out.append(row._make(values))
        return out

    def execute(self, conn: Connection, params: dict[str, Any]) -> int:
        """Run a statement whose rows are not read; its row count."""
        if not self.direct(conn):
            return int(conn.execute(self.statement, params).rowcount)  # type: ignore[attr-defined]
        cursor = self._send(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def write(self, conn: Connection, params: dict[str, Any]) -> None:
        """:func:`.pipeline.write` of this statement: its result is not read, so on a folding
        engine it is queued and sent with the next statement or the COMMIT."""
        if not self.direct(conn):
            pipeline.write(conn, self.statement, params)
            return
        captured = pipeline.capture_start(conn)
        done = False
        try:
            self.execute(conn, params)
            done = True
        finally:
            pipeline.capture_end(conn, captured, keep=done)

    def _send(self, conn: Connection, params: dict[str, Any]) -> Any:
        """``Connection.execute``'s send, for a compiled text: listeners, driver, errors."""
        if not conn.in_transaction():
            conn.begin()  # what SQLAlchemy's autobegin does before a statement
        dbapi: Any = conn.connection.dbapi_connection
        cursor = dbapi.cursor()
        statement, parameters = self.sql, self.parameters(params)
        context = self._options
        dispatch = conn.dispatch
        for before in dispatch.before_cursor_execute:
            statement, parameters = before(conn, cursor, statement, parameters, context, False)
        try:
            if parameters:
                cursor.execute(statement, parameters)
            else:
                cursor.execute(statement)
        except BaseException as exc:
            pipeline.forget_failed(dbapi, exc)
            conn._handle_dbapi_exception(exc, statement, parameters, cursor, None)
            raise  # not reached: the call above raises
        for after in dispatch.after_cursor_execute:
            after(conn, cursor, statement, parameters, context, False)
        return cursor


#: Compiled statements by (name, :func:`dialect_signature`), for every catalog of this process
#: (module docstring). A child forked after :mod:`.warm` compiled them inherits them.
_SHARED: dict[tuple[str, tuple[Any, ...]], CompiledStatement] = {}


def dialect_signature(dialect: Dialect) -> tuple[Any, ...]:
    """What a statement's compiled form depends on, of a dialect: its class (compiler, type
    compiler, identifier quoting, type processors), its parameter style, how long a label may
    be, and the flags a compiler consults for SELECT, INSERT and UPDATE. Not the server's
    version or anything else a first connect fills in (module docstring)."""
    return (
        type(dialect),
        dialect.paramstyle,
        dialect.positional,
        dialect.label_length,
        dialect.max_identifier_length,
        dialect.supports_native_boolean,
        dialect.supports_native_decimal,
        dialect.tuple_in_values,
        dialect.div_is_floordiv,
        dialect.bind_typing,
    )


def compiled(
    cat: Any,
    name: str,
    build: Callable[[], Executable],
    *,
    column_keys: Sequence[str] | None = None,
) -> CompiledStatement:
    """The statement ``build()`` makes, compiled once per process for its engine's kind of
    dialect (:data:`_SHARED`) and bound to this catalog's dialect object (``cat.own``). ``name``
    must name one statement (and column keys) for every catalog of a dialect: ``build`` may read
    only the schema and the dialect's name, as for ``Catalog.memo``."""
    return cat.own(  # type: ignore[no-any-return]
        name, lambda: shared_statement(name, cat.engine.dialect, build, column_keys=column_keys)
    )


def shared_statement(
    name: str,
    dialect: Dialect,
    build: Callable[[], Executable],
    *,
    column_keys: Sequence[str] | None = None,
) -> CompiledStatement:
    """:func:`compiled` without a catalog: the process's statement ``name`` for ``dialect``'s
    kind of dialect, bound to ``dialect`` (compiled now if this process has not yet)."""
    key = (name, dialect_signature(dialect))
    found = _SHARED.get(key)
    if found is None:
        found = _SHARED.setdefault(
            key, CompiledStatement(build(), dialect, column_keys=column_keys)
        )
    return found.bound_to(dialect)
