"""Unreachable or misconfigured: the verdict on real errors from real drivers (decision 0090).

Every error here comes from a real driver talking to a real server or file: a closed port, a host
name that does not resolve, a wrong password and an unknown database on the local PostgreSQL, a
login whose privileges were revoked, a SQLite catalog that cannot be written. A misconfigured
catalog must raise :class:`CatalogMisconfiguredError` at once (no retry: a retried login only
adds failed logins); an unreachable one :class:`CatalogUnavailableError` after brief retries.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymssql
import pytest
import sqlalchemy.dialects.sqlite.pysqlite  # noqa: F401  imported before dropping privileges
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import airflow_provider_bfx.catalog.migrate  # noqa: F401  (the store imports it lazily)
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.errors import (
    CatalogMisconfiguredError,
    Problem,
    Verdict,
    diagnose,
)
from airflow_provider_bfx.catalog.migrate import CatalogSchemaError, upgrade
from airflow_provider_bfx.catalog.store import (
    BatchSpec,
    CatalogStore,
    CatalogUnavailableError,
    TaskSpec,
)
from tests.story import deployed_store

PG_DRIVERS = ["postgresql+psycopg2", "postgresql+psycopg"]


def _start(store: CatalogStore) -> None:
    store.start_task(TaskSpec(BatchSpec("wh", "r1"), "load"))


def _counting_connects(engine: Engine) -> list[int]:
    """Every DB-API connect attempt of ``engine`` appends to the returned list."""
    attempts: list[int] = []

    @event.listens_for(engine, "do_connect")
    def _count(*_args: Any) -> None:
        attempts.append(1)

    return attempts


def _closed_port() -> int:
    with socket.socket() as probe:  # free a moment ago: nobody listens on it
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _with(pg_url: str, **parts: Any) -> str:
    return make_url(pg_url).set(**parts).render_as_string(hide_password=False)


# -- unreachable: retried, then unavailable ----------------------------------------------------


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_a_closed_port_is_unavailable_after_retries(driver: str) -> None:
    engine = create_catalog_engine(f"{driver}://bfx:bfx@127.0.0.1:{_closed_port()}/bfx_catalog")
    attempts = _counting_connects(engine)
    store = CatalogStore(engine, retry_seconds=2.0)

    with pytest.raises(CatalogUnavailableError) as raised:
        _start(store)

    assert len(attempts) >= 2  # retried before giving up
    assert "PQPING_NO_RESPONSE" in str(raised.value)
    cause = raised.value.__cause__
    assert isinstance(cause, DBAPIError)
    assert diagnose(cause, engine).verdict is Verdict.UNAVAILABLE


def test_an_unresolvable_host_name_is_unavailable_after_retries() -> None:
    # ``.invalid`` never resolves (RFC 6761); a name-resolution failure is an unreachable
    # catalog, retried like a refused connection.
    url = "postgresql+psycopg2://bfx:bfx@bfx-catalog.invalid:5432/bfx_catalog"
    engine = create_catalog_engine(url)
    attempts = _counting_connects(engine)
    store = CatalogStore(engine, retry_seconds=2.0)

    with pytest.raises(CatalogUnavailableError) as raised:
        _start(store)

    assert len(attempts) >= 2
    assert "bfx-catalog.invalid" in str(raised.value)
    assert "PQPING_NO_RESPONSE" in str(raised.value)


def test_a_closed_sql_server_port_is_unavailable() -> None:
    engine = create_engine(f"mssql+pymssql://sa:x@127.0.0.1:{_closed_port()}/master")
    try:
        with pytest.raises(DBAPIError) as raised, engine.connect():
            pass
        found = diagnose(raised.value, engine)
    finally:
        engine.dispose()
    assert found.verdict is Verdict.UNAVAILABLE
    assert found.code == "SQL Server error 20009"  # FreeTDS SYBECONN: unable to connect


# -- misconfigured PostgreSQL: at once, no retry -----------------------------------------------


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_a_wrong_password_is_misconfigured_without_a_retry(pg_url: str, driver: str) -> None:
    engine = create_catalog_engine(_with(pg_url, drivername=driver, password="not-the-password"))
    attempts = _counting_connects(engine)
    store = CatalogStore(engine, retry_seconds=5.0)

    with pytest.raises(CatalogMisconfiguredError) as raised:
        _start(store)

    assert attempts == [1]  # one failed login, not one per retry
    error = raised.value
    assert error.problem is Problem.REFUSED
    assert "password authentication failed" in str(error)  # the server's own reason, quoted
    assert "check the login, password and database name of the catalog connection" in str(error)
    assert "not-the-password" not in str(error)
    named = str(error.naming("bfx_catalog_default"))
    assert "of Airflow connection 'bfx_catalog_default'" in named


def test_an_unknown_database_is_misconfigured(pg_url: str) -> None:
    engine = create_catalog_engine(_with(pg_url, database="bfx_no_such_database"))
    attempts = _counting_connects(engine)

    with pytest.raises(CatalogMisconfiguredError) as raised:
        _start(CatalogStore(engine, retry_seconds=5.0))

    assert attempts == [1]
    assert raised.value.problem is Problem.REFUSED
    assert 'database "bfx_no_such_database" does not exist' in str(raised.value)


@pytest.mark.parametrize(
    "revoke",
    [
        pytest.param("REVOKE ALL ON bfx.Execution FROM bfx_test", id="table"),
        pytest.param("REVOKE ALL ON SCHEMA bfx FROM bfx_test", id="schema"),
    ],
)
def test_a_missing_permission_is_misconfigured(pg_url: str, revoke: str) -> None:
    # The test role owns the catalog it deployed; an owner's privileges can be revoked like
    # anyone's (it could grant them back), which is what a DBA's REVOKE does to a login.
    deployed_store(pg_url).engine.dispose()
    admin = create_engine(pg_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(revoke))
    admin.dispose()
    engine = create_catalog_engine(pg_url)
    attempts = _counting_connects(engine)

    with pytest.raises(CatalogMisconfiguredError) as raised:
        _start(CatalogStore(engine, retry_seconds=5.0))

    assert attempts == [1]
    assert raised.value.problem is Problem.PERMISSION
    assert "SQLSTATE 42501" in str(raised.value)
    assert "grant the login of the catalog connection USAGE on the bfx schema" in str(raised.value)


def test_a_missing_schema_is_misconfigured(pg_url: str) -> None:
    with pytest.raises(CatalogMisconfiguredError) as raised:
        _start(CatalogStore(create_catalog_engine(pg_url)))
    assert isinstance(raised.value, CatalogSchemaError)
    assert raised.value.problem is Problem.SCHEMA
    assert "bfx catalog init" in str(raised.value)


# -- SQLite --------------------------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="bfx-readonly-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)


def _unprivileged(attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``attempt`` as a user file modes apply to.

    Tests run as root in CI, and root writes through any file mode: as root, ``attempt`` runs
    in a forked child that has become ``nobody`` (every module it needs is imported above,
    before the fork, since the interpreter's own files may be unreadable to ``nobody``).
    """
    if os.geteuid() != 0:
        return attempt()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = attempt()
        except BaseException as exc:
            result = {"crashed": repr(exc)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def _start_sqlite(url: str) -> dict[str, Any]:
    """Start a task on the SQLite catalog at ``url``; what happened, as plain data."""
    engine = create_catalog_engine(url)
    try:
        _start(CatalogStore(engine, retry_seconds=5.0))
    except CatalogMisconfiguredError as exc:
        return {"error": "misconfigured", "problem": exc.problem.value, "message": str(exc)}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    finally:
        engine.dispose()
    return {"error": None}


def _deploy(path: Path) -> None:
    engine = create_catalog_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection checkpoints the WAL away: one file remains


def test_a_read_only_sqlite_file_is_misconfigured(shared_dir: Path) -> None:
    path = shared_dir / "catalog.db"
    _deploy(path)
    path.chmod(0o444)
    shared_dir.chmod(0o777)  # the directory is writable: only the file is not

    result = _unprivileged(lambda: _start_sqlite(f"sqlite:///{path}"))

    assert result["error"] == "misconfigured", result
    assert result["problem"] == Problem.READ_ONLY.value
    assert "SQLITE_READONLY" in result["message"]
    assert "make the file AND its directory writable" in result["message"]


def test_a_sqlite_file_in_a_read_only_directory_is_misconfigured(shared_dir: Path) -> None:
    # SQLite must create its -wal and -shm files next to the catalog: a writable file in a
    # directory the tasks' user cannot write is a catalog that cannot be written.
    path = shared_dir / "catalog.db"
    _deploy(path)
    path.chmod(0o666)
    shared_dir.chmod(0o555)

    result = _unprivileged(lambda: _start_sqlite(f"sqlite:///{path}"))

    assert result["error"] == "misconfigured", result
    assert result["problem"] == Problem.READ_ONLY.value
    assert "SQLITE_READONLY_DIRECTORY" in result["message"]


def test_a_sqlite_catalog_opened_read_only_is_misconfigured(tmp_path: Path) -> None:
    # ``mode=ro``: read-only for every user, root included (no privileges to drop).
    path = tmp_path / "catalog.db"
    _deploy(path)

    result = _start_sqlite(f"sqlite:///file:{path}?mode=ro&uri=true")

    assert result["error"] == "misconfigured", result
    assert result["problem"] == Problem.READ_ONLY.value
    assert "SQLITE_READONLY" in result["message"]


def test_a_sqlite_catalog_in_a_missing_directory_is_misconfigured(tmp_path: Path) -> None:
    result = _start_sqlite(f"sqlite:///{tmp_path / 'no-such-dir' / 'catalog.db'}")

    assert result["error"] == "misconfigured", result
    assert result["problem"] == Problem.CANNOT_OPEN.value
    assert "SQLITE_CANTOPEN" in result["message"]


def test_a_busy_sqlite_catalog_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's transition holds the write lock
    try:
        waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError) as raised:
            waiter.execute("BEGIN IMMEDIATE")
        waiter.close()
    finally:
        holder.rollback()
        holder.close()
    found = diagnose(raised.value)
    assert found.verdict is Verdict.TRANSIENT
    assert found.code == "SQLITE_BUSY"


def test_sqlite_without_result_codes_falls_back_to_sqlites_own_error_strings() -> None:
    # Python 3.10's sqlite3 has no ``sqlite_errorcode``: an error constructed without one is
    # what it raises. SQLite's fixed text of a result code stands for that code, whole.
    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    assert not hasattr(readonly, "sqlite_errorcode")
    assert diagnose(readonly).problem is Problem.READ_ONLY
    assert diagnose(sqlite3.OperationalError("database is locked")).verdict is Verdict.TRANSIENT
    other = sqlite3.OperationalError("no such table: attempt to write a readonly database")
    assert diagnose(other).verdict is Verdict.OTHER


# -- SQL Server numbers (no SQL Server here: pymssql's own exception, as it raises it) -------


@pytest.mark.parametrize(
    ("number", "verdict", "problem"),
    [
        (18456, Verdict.MISCONFIGURED, Problem.AUTHENTICATION),  # login failed
        (4060, Verdict.MISCONFIGURED, Problem.UNKNOWN_DATABASE),  # cannot open database
        (229, Verdict.MISCONFIGURED, Problem.PERMISSION),  # permission denied on an object
        (3906, Verdict.MISCONFIGURED, Problem.READ_ONLY),  # database is read-only
        (1205, Verdict.TRANSIENT, None),  # deadlock victim
        (20009, Verdict.UNAVAILABLE, None),  # FreeTDS: unable to connect
        (2627, Verdict.OTHER, None),  # a duplicate key is not about reaching the catalog
    ],
)
def test_sql_server_error_numbers(number: int, verdict: Verdict, problem: Problem | None) -> None:
    error = pymssql.OperationalError((number, b"the server's message"))
    found = diagnose(error)
    assert found.verdict is verdict
    assert found.problem is problem


# -- the error itself --------------------------------------------------------------------------


def test_a_misconfigured_error_survives_pickling() -> None:
    error = CatalogMisconfiguredError(Problem.AUTHENTICATION, "postgresql://h/db", "SQLSTATE 28P01")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert copy.problem is Problem.AUTHENTICATION
    assert "check the login and password of Airflow connection 'c'" in str(copy.naming("c"))


def test_the_cli_reports_a_misconfigured_catalog_in_one_line(
    pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store now raises CatalogMisconfiguredError where it let a driver error through:
    # ``bfx`` must still print one line, not a traceback.
    from airflow_provider_bfx.cli.main import main

    # main() marks the process a server context, as Airflow's CLI does; undone after the test.
    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")

    deployed_store(pg_url).engine.dispose()
    admin = create_engine(pg_url, poolclass=NullPool)
    with admin.begin() as conn:
        # ``history`` reads Package first (an unknown DAG stops there), then Execution.
        conn.execute(text("REVOKE ALL ON bfx.Package, bfx.Execution FROM bfx_test"))
    admin.dispose()

    code = main(["history", "wh", "--url", pg_url])

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("bfx: error: the login lacks a permission the catalog needs"), err
    assert len(err.strip().splitlines()) == 1
