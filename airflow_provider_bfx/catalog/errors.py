"""Why a catalog call failed: unreachable, a passing hiccup, or misconfigured. No Airflow here.

The difference decides what a routed task does (DESIGN.md §7, decision 0090). A catalog that
cannot be REACHED (refused, timed out, shutting down, name not resolved) is *unavailable*: the
task fails with ``BFX_CATALOG_UNAVAILABLE``, or runs unrouted under ``[bfx]
on_catalog_unavailable = run``. A catalog that ANSWERS with an error (authentication, unknown
database, permission, read-only, missing schema) is *misconfigured*: running unrouted would redo
finished work, and waiting will not fix it, so the task fails before any work naming the problem
and its fix, whatever ``on_catalog_unavailable`` says.

The verdict is taken from the codes the drivers expose, never from message text: server messages
are localised (``lc_messages``, SQL Server's language) and reworded between versions.

* PostgreSQL (psycopg2 ``pgcode``, psycopg ``sqlstate``): SQLSTATE classes and codes.
* SQL Server: the error number (pymssql's first argument; pyodbc's native number), else pyodbc's
  SQLSTATE.
* SQLite (``sqlite_errorcode``, Python 3.11+): the primary result code.

Where the driver has no code at all, the fallbacks are:

* a PostgreSQL connection that fails before a session exists: psycopg2 and psycopg report no
  SQLSTATE for it (libpq keeps the server's code to itself). libpq's own ``PQping`` with the same
  parameters (but no password: it never counts as a failed login) tells "no response" (refused,
  timed out, unknown host) and "rejecting connections" (starting up, shutting down, recovering:
  57P03) from "the server is up and answering", which means it refused *us*: misconfigured;
* SQLite before Python 3.11 (no ``sqlite_errorcode``): SQLite's fixed ``sqlite3_errstr`` text of
  a result code, compared whole, stands for that code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import glob
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from airflow_provider_bfx.exceptions import BfxError


class CatalogUnavailableError(BfxError, RuntimeError):
    """The catalog could not be reached (after brief retries)."""


class Verdict(enum.Enum):
    """What a failed catalog call means for the task that made it."""

    #: Cannot be reached (refused, timed out, shutting down, name not resolved): retried
    #: briefly, then :class:`CatalogUnavailableError`.
    UNAVAILABLE = "unavailable"
    #: Reached, but this attempt lost (deadlock victim, serialization failure, busy file, a
    #: server short of resources): re-run from the first read, then unavailable.
    TRANSIENT = "transient"
    #: Answered with an error a person must fix: :class:`CatalogMisconfiguredError`, no retry.
    MISCONFIGURED = "misconfigured"
    #: Not about reaching the catalog (a constraint, a bug): the error propagates unchanged.
    OTHER = "other"


class Problem(enum.Enum):
    """What is misconfigured; each has a sentence and a fix (:data:`_TEXT`)."""

    AUTHENTICATION = "authentication"
    UNKNOWN_DATABASE = "unknown_database"
    PERMISSION = "permission"
    READ_ONLY = "read_only"
    CANNOT_OPEN = "cannot_open"
    NOT_A_DATABASE = "not_a_database"
    REFUSED = "refused"
    INVALID_PARAMETERS = "invalid_parameters"
    SCHEMA = "schema"


#: ``{connection}`` is "the catalog connection", or "Airflow connection 'x'" once the routing
#: knows which one (:meth:`CatalogMisconfiguredError.naming`).
_TEXT: dict[Problem, tuple[str, str]] = {
    Problem.AUTHENTICATION: (
        "authentication failed",
        "check the login and password of {connection}",
    ),
    Problem.UNKNOWN_DATABASE: (
        "the database does not exist",
        "check the database name (the connection's schema field) of {connection}, or create"
        " that database and run `bfx catalog init`",
    ),
    Problem.PERMISSION: (
        "the login lacks a permission the catalog needs",
        "grant the login of {connection} USAGE on the bfx schema and SELECT, INSERT, UPDATE,"
        " DELETE on its tables (or use the login that ran `bfx catalog init`)",
    ),
    Problem.READ_ONLY: (
        "the catalog is read-only",
        "point {connection} at a writable primary, not a read-only replica or database; for a"
        " SQLite catalog make the file AND its directory writable by the user the tasks run as"
        " (SQLite writes its -wal and -shm files next to it)",
    ),
    Problem.CANNOT_OPEN: (
        "the SQLite catalog file cannot be opened",
        "check that the path of {connection} names a file in an existing directory that the"
        " user the tasks run as can read and write",
    ),
    Problem.NOT_A_DATABASE: (
        "the file is not a usable SQLite database (not a database, or damaged)",
        "point {connection} at the catalog file, or restore the catalog from a backup",
    ),
    Problem.REFUSED: (
        "the server answered but refused the connection",
        "check the login, password and database name of {connection}; the server's own"
        " reason is quoted in parentheses",
    ),
    Problem.INVALID_PARAMETERS: (
        "the connection parameters are invalid",
        "check the host, port and extra parameters of {connection}",
    ),
    Problem.SCHEMA: ("the catalog schema is missing or outdated", "run `bfx catalog init`"),
}

_DEFAULT_CONNECTION = "the catalog connection"


class CatalogMisconfiguredError(BfxError, RuntimeError):
    """The catalog answered with an error that only a person can fix (DESIGN.md §7).

    Never retried and never a reason to run a task unrouted: the message names the problem,
    the code that told it, the catalog, and the fix. A subclass may bring its own complete
    ``message`` (:class:`~airflow_provider_bfx.catalog.migrate.CatalogSchemaError` does).
    """

    def __init__(
        self,
        problem: Problem,
        where: str,
        detail: str,
        *,
        connection: str = _DEFAULT_CONNECTION,
        message: str | None = None,
    ) -> None:
        self.problem = problem
        self.where = where
        self.detail = detail
        self.own_message = message is not None
        if message is None:
            what, fix = _TEXT[problem]
            message = (
                f"{what} for the catalog at {where} ({detail}): {fix.format(connection=connection)}"
            )
        super().__init__(message)

    def naming(self, conn_id: str) -> CatalogMisconfiguredError:
        """The same error, its fix naming the Airflow connection (known only to the routing)."""
        if self.own_message:
            return self
        named = CatalogMisconfiguredError(
            self.problem, self.where, self.detail, connection=f"Airflow connection {conn_id!r}"
        )
        named.__cause__ = self.__cause__
        return named

    def __reduce__(self) -> tuple[Any, ...]:
        # The constructor takes more than the message: pickle the state, not the arguments.
        return (_restore, (type(self), str(self), dict(self.__dict__)))


def _restore(
    cls: type[CatalogMisconfiguredError], message: str, state: dict[str, Any]
) -> CatalogMisconfiguredError:
    error = cls.__new__(cls)
    RuntimeError.__init__(error, message)
    error.__dict__.update(state)
    return error


@dataclass(frozen=True)
class Diagnosis:
    """The verdict on one error, the problem when misconfigured, and the code that decided."""

    verdict: Verdict
    problem: Problem | None = None
    code: str = ""


def diagnose(exc: BaseException, engine: Engine | None = None) -> Diagnosis:
    """The verdict on ``exc``, raised by a call to the catalog at ``engine``.

    ``engine`` is needed only for a PostgreSQL connection that failed without a SQLSTATE (the
    libpq ping, see the module docstring); without it such an error counts as unavailable.
    """
    orig: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    driver = type(orig).__module__.split(".")[0]
    found: Diagnosis | None = None
    if driver in ("psycopg2", "psycopg"):
        code = getattr(orig, "pgcode" if driver == "psycopg2" else "sqlstate", None)
        found = _postgres(code) if code else None
    elif driver == "sqlite3":
        found = _sqlite(orig)
    elif driver == "pymssql":
        found = _sql_server(_pymssql_number(orig), None)
    elif driver == "pyodbc":
        found = _sql_server(*_pyodbc_codes(orig))
    if found is not None:
        return found
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        # The dialect saw the session drop (server gone, connection reset): SQLAlchemy's own
        # disconnect test, which the pool also relies on.
        return Diagnosis(Verdict.UNAVAILABLE, code="connection invalidated")
    if driver in ("psycopg2", "psycopg"):
        return _postgres_without_code(exc, engine)
    return Diagnosis(Verdict.OTHER)


def misconfigured(exc: BaseException, found: Diagnosis, where: str) -> CatalogMisconfiguredError:
    """The error to raise for ``exc`` diagnosed as misconfigured at ``where``."""
    assert found.problem is not None
    return CatalogMisconfiguredError(found.problem, where, f"{found.code}: {first_line(exc)}")


def catalog_error(exc: DBAPIError, engine: Engine, during: str) -> BaseException:
    """What to raise for ``exc`` where the caller does not retry: a
    :class:`CatalogMisconfiguredError`, a :class:`CatalogUnavailableError`, or ``exc`` itself
    when it is not about reaching the catalog."""
    found = diagnose(exc, engine)
    where = engine.url.render_as_string(hide_password=True)
    if found.verdict is Verdict.MISCONFIGURED:
        return misconfigured(exc, found, where)
    if found.verdict is Verdict.OTHER:
        return exc
    return CatalogUnavailableError(
        f"catalog at {where} is unavailable during {during} ({found.code}): {first_line(exc)}"
    )


def first_line(exc: BaseException) -> str:
    """The driver's own first line of ``exc`` (what the server or library said)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- PostgreSQL ----------------------------------------------------------------------------------

_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now
_PG_TRANSIENT = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57014",  # query_canceled (statement_timeout)
        # A prepared facts query the session no longer knows (a pooler's DISCARD ALL), or a
        # name another client took on a pooled server session: the pipeline forgets or
        # renames its statements, and the re-run prepares them again (decision 0105).
        "26000",  # invalid_sql_statement_name
        "42P05",  # duplicate_prepared_statement
    }
)
_PG_MISCONFIGURED = {
    "3D000": Problem.UNKNOWN_DATABASE,  # invalid_catalog_name
    "42501": Problem.PERMISSION,  # insufficient_privilege
    "25006": Problem.READ_ONLY,  # read_only_sql_transaction (a hot standby)
    "3F000": Problem.SCHEMA,  # invalid_schema_name
    "42P01": Problem.SCHEMA,  # undefined_table
}


def _postgres(sqlstate: str) -> Diagnosis | None:
    code = f"SQLSTATE {sqlstate}"
    if sqlstate.startswith("08") or sqlstate in _PG_UNAVAILABLE:  # 08: connection_exception
        return Diagnosis(Verdict.UNAVAILABLE, code=code)
    if sqlstate.startswith("53") or sqlstate in _PG_TRANSIENT:  # 53: insufficient_resources
        return Diagnosis(Verdict.TRANSIENT, code=code)
    if sqlstate.startswith("28"):  # invalid_authorization_specification
        return Diagnosis(Verdict.MISCONFIGURED, Problem.AUTHENTICATION, code)
    problem = _PG_MISCONFIGURED.get(sqlstate)
    if problem is not None:
        return Diagnosis(Verdict.MISCONFIGURED, problem, code)
    return None


class Ping(enum.IntEnum):
    """libpq's ``PGPing``: what ``PQping`` learnt about the server."""

    OK = 0  # the server answered (it may still refuse these credentials)
    REJECT = 1  # the server refuses all connections now (starting up, shutting down: 57P03)
    NO_RESPONSE = 2  # nobody answered: refused, timed out, host name not resolved
    NO_ATTEMPT = 3  # the parameters are invalid; nothing was sent


def _postgres_without_code(exc: BaseException, engine: Engine | None) -> Diagnosis:
    ping = libpq_ping(engine) if engine is not None else None
    if ping is None:
        # No libpq to ask: the earlier behaviour, documented in decision 0090.
        return Diagnosis(Verdict.UNAVAILABLE, code="no SQLSTATE, no libpq to ping")
    code = f"no SQLSTATE, libpq PQPING_{ping.name}"
    if ping in (Ping.NO_RESPONSE, Ping.REJECT):
        return Diagnosis(Verdict.UNAVAILABLE, code=code)
    if ping is Ping.NO_ATTEMPT:
        return Diagnosis(Verdict.MISCONFIGURED, Problem.INVALID_PARAMETERS, code)
    if isinstance(exc, DBAPIError) and exc.statement is None:
        # Failed while connecting, yet the server answers: it refused this login or database.
        return Diagnosis(Verdict.MISCONFIGURED, Problem.REFUSED, code)
    return Diagnosis(Verdict.OTHER, code=code)


def libpq_ping(engine: Engine) -> Ping | None:
    """``PQping`` with ``engine``'s connection parameters minus the password; ``None`` when no
    libpq can be loaded. A ping never authenticates, so it never adds a failed login."""
    ping = _ping_function()
    if ping is None:
        return None
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    parts = [str(arg) for arg in cargs if isinstance(arg, str)]
    params = {k: v for k, v in cparams.items() if isinstance(v, (str, int)) and k != "password"}
    params.setdefault("connect_timeout", 5)
    parts += [f"{key}={_conninfo_value(value)}" for key, value in params.items()]
    return Ping(ping(" ".join(parts).encode()))


def _conninfo_value(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


@functools.cache
def _ping_function() -> Callable[[bytes], int] | None:
    """libpq's ``PQping``: through psycopg (3) when installed, else the libpq psycopg2 ships."""
    try:
        from psycopg import pq
    except ImportError:
        pass
    else:
        return lambda conninfo: int(pq.PGconn.ping(conninfo))
    for path in _libpq_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        function = lib.PQping
        function.argtypes = [ctypes.c_char_p]
        function.restype = ctypes.c_int
        return lambda conninfo: int(function(conninfo))
    return None


def _libpq_paths() -> list[str]:
    """The libpq bundled with psycopg2-binary (Linux, macOS wheels), then the system's."""
    paths: list[str] = []
    spec = importlib.util.find_spec("psycopg2")
    if spec is not None and spec.origin:
        package = os.path.dirname(spec.origin)
        for pattern in ("../psycopg2_binary.libs/libpq*", ".dylibs/libpq*"):
            paths += sorted(glob.glob(os.path.join(package, pattern)))
    system = ctypes.util.find_library("pq")
    if system:
        paths.append(system)
    return paths


# -- SQLite --------------------------------------------------------------------------------------

_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_AUTH, _SQLITE_NOTADB = 11, 13, 14, 23, 26

_SQLITE_MISCONFIGURED = {
    _SQLITE_READONLY: Problem.READ_ONLY,
    _SQLITE_CANTOPEN: Problem.CANNOT_OPEN,
    _SQLITE_PERM: Problem.CANNOT_OPEN,
    _SQLITE_AUTH: Problem.PERMISSION,
    _SQLITE_NOTADB: Problem.NOT_A_DATABASE,
    _SQLITE_CORRUPT: Problem.NOT_A_DATABASE,
}

#: Python < 3.11 exposes no result code: SQLite's fixed ``sqlite3_errstr`` of each code we act
#: on, which is what pysqlite reports for these errors (compared whole, never searched).
_SQLITE_ERRSTR = {
    "access permission denied": (_SQLITE_PERM, "SQLITE_PERM"),
    "database is locked": (_SQLITE_BUSY, "SQLITE_BUSY"),
    "database table is locked": (_SQLITE_LOCKED, "SQLITE_LOCKED"),
    "attempt to write a readonly database": (_SQLITE_READONLY, "SQLITE_READONLY"),
    "database disk image is malformed": (_SQLITE_CORRUPT, "SQLITE_CORRUPT"),
    "database or disk is full": (_SQLITE_FULL, "SQLITE_FULL"),
    "unable to open database file": (_SQLITE_CANTOPEN, "SQLITE_CANTOPEN"),
    "authorization denied": (_SQLITE_AUTH, "SQLITE_AUTH"),
    "file is not a database": (_SQLITE_NOTADB, "SQLITE_NOTADB"),
}


def sqlite_code(error: BaseException) -> tuple[int, str] | None:
    """The primary result code of a sqlite3 error and the name of its (extended) code."""
    extended = getattr(error, "sqlite_errorcode", None)
    if isinstance(extended, int):
        return extended & 0xFF, str(getattr(error, "sqlite_errorname", extended))
    return _SQLITE_ERRSTR.get(str(error).strip())


def sqlite_busy(error: BaseException) -> bool:
    """Whether a sqlite3 error is SQLITE_BUSY or SQLITE_LOCKED: another connection holds it."""
    found = sqlite_code(error)
    return found is not None and found[0] in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _sqlite(error: BaseException) -> Diagnosis | None:
    found = sqlite_code(error)
    if found is None:
        return None
    primary, name = found
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL):
        return Diagnosis(Verdict.TRANSIENT, code=name)
    problem = _SQLITE_MISCONFIGURED.get(primary)
    if problem is not None:
        return Diagnosis(Verdict.MISCONFIGURED, problem, name)
    return None


# -- SQL Server ----------------------------------------------------------------------------------

_MSSQL_UNAVAILABLE = frozenset(
    {
        # FreeTDS DB-Library (pymssql): SYBEFCON, SYBETIME, SYBEREAD, SYBEWRIT, SYBESOCK,
        # SYBECONN (refused, unreachable, unknown host), SYBEUHST, SYBESEOF, SYBEDDNE
        20002, 20003, 20004, 20006, 20008, 20009, 20013, 20017, 20047,
        # SQL Server: shutdown in progress; Azure SQL: database not currently available
        6005, 40613,
        # Network library errors surfaced as native numbers (pyodbc)
        -2, 53, 64, 233, 10053, 10054, 10060, 10061, 11001,
    }
)  # fmt: skip
_MSSQL_TRANSIENT = frozenset(
    {
        1205,  # deadlock victim
        1222,  # lock request time out
        40501,  # service busy (Azure SQL)
        40197,  # service error processing the request (Azure SQL)
        10928, 10929,  # resource limits reached (Azure SQL)
        49918, 49919, 49920,  # too many operations in progress (Azure SQL)
    }
)  # fmt: skip
_MSSQL_MISCONFIGURED = {
    18456: Problem.AUTHENTICATION,  # login failed
    18452: Problem.AUTHENTICATION,  # login from an untrusted domain
    18486: Problem.AUTHENTICATION,  # account locked out
    18487: Problem.AUTHENTICATION,  # password expired
    18488: Problem.AUTHENTICATION,  # password must be changed
    20014: Problem.AUTHENTICATION,  # SYBEPWD (FreeTDS)
    4060: Problem.UNKNOWN_DATABASE,  # cannot open database requested by the login
    4064: Problem.UNKNOWN_DATABASE,  # cannot open the login's default database
    911: Problem.UNKNOWN_DATABASE,  # database does not exist
    229: Problem.PERMISSION,  # permission denied on an object
    230: Problem.PERMISSION,  # permission denied on a column
    262: Problem.PERMISSION,  # permission denied in database (CREATE ...)
    297: Problem.PERMISSION,  # user does not have permission to perform this action
    300: Problem.PERMISSION,  # permission was denied on an object (server-level)
    916: Problem.PERMISSION,  # principal cannot access the database in this security context
    3906: Problem.READ_ONLY,  # failed to update database because it is read-only
    208: Problem.SCHEMA,  # invalid object name
    2760: Problem.SCHEMA,  # the specified schema name does not exist
}
_ODBC_UNAVAILABLE = frozenset({"08001", "08S01", "HYT00", "HYT01"})
_ODBC_PATTERN = re.compile(r"\((-?\d+)\)")


def _sql_server(number: int | None, sqlstate: str | None) -> Diagnosis | None:
    if number is not None:
        code = f"SQL Server error {number}"
        if number in _MSSQL_UNAVAILABLE:
            return Diagnosis(Verdict.UNAVAILABLE, code=code)
        if number in _MSSQL_TRANSIENT:
            return Diagnosis(Verdict.TRANSIENT, code=code)
        problem = _MSSQL_MISCONFIGURED.get(number)
        if problem is not None:
            return Diagnosis(Verdict.MISCONFIGURED, problem, code)
    if sqlstate is None:
        return None
    code = f"SQLSTATE {sqlstate}"
    if sqlstate in _ODBC_UNAVAILABLE:
        return Diagnosis(Verdict.UNAVAILABLE, code=code)
    if sqlstate == "40001":
        return Diagnosis(Verdict.TRANSIENT, code=code)
    if sqlstate.startswith("28"):
        return Diagnosis(Verdict.MISCONFIGURED, Problem.AUTHENTICATION, code)
    if sqlstate == "08004":  # the server rejected the connection
        return Diagnosis(Verdict.MISCONFIGURED, Problem.REFUSED, code)
    return None


def _pymssql_number(error: BaseException) -> int | None:
    """pymssql raises ``OperationalError((number, message))`` (or ``(number, message)``): the
    server's error number when it sent one, else FreeTDS's DB-Library number."""
    args: Any = error.args
    if args and isinstance(args[0], tuple):
        args = args[0]
    return args[0] if args and isinstance(args[0], int) else None


def _pyodbc_codes(error: BaseException) -> tuple[int | None, str | None]:
    """pyodbc raises ``Error(sqlstate, text)``; the native error number is the text's first
    parenthesised integer, where every ODBC driver manager prints it (``... (18456)``)."""
    args = error.args
    sqlstate = args[0] if args and isinstance(args[0], str) and len(args[0]) == 5 else None
    text = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
    found = _ODBC_PATTERN.search(text)
    return (int(found.group(1)) if found else None), sqlstate
