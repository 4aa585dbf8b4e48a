"""Create, upgrade and check the catalog schema, and write the SQL script a DBA runs by hand.

The schema is versioned with Alembic (``migrations/`` next to this module, no ``alembic.ini``:
the configuration is built here). Three ways in, all leading to the same tables and the same
row in the version table ``bfx.bfx_alembic_version`` (unqualified on SQLite):

* :func:`upgrade` migrates a live database (``bfx catalog init`` and ``bfx catalog upgrade``);
* :func:`offline_sql` renders the same migrations as a script (``bfx catalog ddl``), for the
  many shops where only a DBA may run DDL;
* :func:`check_schema` is what every user of the catalog calls before its first statement: one
  query, and if the schema is missing or at another revision an error that says what is wrong
  and which command fixes it, instead of a "relation does not exist" halfway through a task.
  Its common case (the catalog is current) is :func:`.revision.check_schema`, which needs no
  Alembic import (a task process would pay for it).

No Airflow import here: the CLI's ``ddl`` verb and the tests run without Airflow.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.exc import DBAPIError

from airflow_provider_bfx.catalog.errors import CatalogMisconfiguredError, Problem
from airflow_provider_bfx.catalog.revision import VERSION_TABLE as VERSION_TABLE
from airflow_provider_bfx.catalog.revision import catalog_schema_name as catalog_schema_name
from airflow_provider_bfx.catalog.revision import version_table
from airflow_provider_bfx.catalog.schema import SUPPORTED_DIALECTS, build_schema

PRODUCT = "airflow-provider-bfx"

#: The Alembic environment shipped in the package. Read at call time, not import time.
SCRIPT_LOCATION = str(Path(__file__).with_name("migrations"))

# Driverless URLs: they name the dialect for offline rendering and never import a DB driver.
_OFFLINE_URLS = {"postgresql": "postgresql://", "mssql": "mssql://", "sqlite": "sqlite://"}

# Alembic's ``context`` and ``op`` are module-level proxies: one migration run at a time per
# process, whatever the database.
_ALEMBIC_LOCK = threading.Lock()

# Serialise concurrent upgrades of one catalog across processes (several workers at once).
_PG_LOCK_KEY = 0x6266785F6D696772  # "bfx_migr" in ASCII; any constant bigint would do
_MSSQL_LOCK = """\
DECLARE @rc INT;
EXEC @rc = sp_getapplock @Resource = N'bfx_catalog_migrate', @LockMode = N'Exclusive',
    @LockOwner = N'Transaction', @LockTimeout = 600000;
IF @rc < 0 THROW 50000, N'could not take the bfx catalog migration lock', 1;"""


class CatalogSchemaError(CatalogMisconfiguredError):
    """The catalog schema is missing, older or newer than this package: the message says why
    and which command fixes it. A misconfigured catalog (decision 0090): a routed task fails
    before any work whatever ``[bfx] on_catalog_unavailable`` says."""

    def __init__(self, message: str) -> None:
        super().__init__(Problem.SCHEMA, "", message, message=message)


def require_dialect(dialect: str) -> None:
    """``ValueError`` unless ``dialect`` is one the catalog supports."""
    if dialect not in SUPPORTED_DIALECTS:
        raise ValueError(
            f"unsupported catalog dialect {dialect!r}: use one of {', '.join(SUPPORTED_DIALECTS)}"
        )


def offline_url(dialect: str) -> str:
    """A URL that only names ``dialect``, for rendering SQL without a database."""
    require_dialect(dialect)
    return _OFFLINE_URLS[dialect]


def head_revision() -> str:
    """The schema revision this package creates and expects (e.g. ``"0001"``)."""
    head = _script(SCRIPT_LOCATION).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revision 0001
        raise RuntimeError(f"no catalog migrations found in {SCRIPT_LOCATION}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the catalog at ``engine``; ``None`` when it has none."""
    dialect = _catalog_dialect(engine)
    with engine.connect() as conn:
        return _migration_context(conn, dialect).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create the catalog schema at ``engine``, or bring an older one up to ``revision``.

    Idempotent: a catalog already at ``revision`` is left alone. Runs in one transaction,
    serialised against other upgrades of the same catalog (an advisory lock on PostgreSQL, an
    application lock on SQL Server; on SQLite the catalog engine's ``BEGIN IMMEDIATE``) and
    against other Alembic runs in this process, so that several workers may call it at once.
    """
    dialect = _catalog_dialect(engine)
    with _ALEMBIC_LOCK, engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        elif dialect == "mssql":
            conn.exec_driver_sql(_MSSQL_LOCK)
        found = _migration_context(conn, dialect).get_current_heads()
        if not found and _catalog_tables_exist(conn, dialect):
            # Alembic would fail on CREATE TABLE; say why instead.
            raise _missing_catalog_error(engine, dialect, tables_exist=True)
        unknown = _unknown(found)
        if unknown:
            # Alembic would only say "Can't locate revision"; say what it means.
            raise _newer_error(unknown, engine)
        config = _config()
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, revision)
        except CommandError as exc:
            raise CatalogSchemaError(
                f"cannot upgrade the catalog at {_where(engine)} to revision {revision!r}: {exc}"
            ) from exc


def check_schema(engine: Engine) -> None:
    """Raise :class:`CatalogSchemaError` unless the catalog at ``engine`` is at the head revision.

    One query when the catalog is fine (the version table); callers cache the result per
    engine. Only on the way to an error does it look further, to say what is wrong.
    """
    dialect = _catalog_dialect(engine)
    failure: DBAPIError | None = None
    with engine.connect() as conn:  # not reachable: the driver's error propagates as is
        try:
            found = tuple(conn.execute(select(version_table(dialect).c.version_num)).scalars())
        except DBAPIError as exc:
            failure = exc
    if failure is not None and failure.connection_invalidated:
        raise failure
    if failure is not None or not found:
        # Looked into on a fresh connection: the failed one may still hold SQLite's lock.
        with engine.connect() as conn:
            if failure is not None and _has_version_table(conn, dialect):
                raise failure  # the database failed us, not the schema
            tables_exist = _catalog_tables_exist(conn, dialect)
        raise _missing_catalog_error(engine, dialect, tables_exist=tables_exist) from None
    unknown = _unknown(found)
    if unknown:
        raise _newer_error(unknown, engine)
    head = head_revision()
    if found != (head,):
        have = ", ".join(found)
        raise CatalogSchemaError(
            f"the catalog at {_where(engine)} is at schema revision {have}, but this {PRODUCT} "
            f"needs revision {head}: run `bfx catalog upgrade` (or have a DBA run the script "
            f"from `bfx catalog ddl --dialect {dialect} --from-revision {have}`)."
        )


def offline_sql(dialect: str, *, from_revision: str | None = None) -> str:
    """The SQL script that brings a ``dialect`` database to the head revision, for a DBA.

    From an empty database by default (schema, tables, indexes, version row); from
    ``from_revision`` to the head when given. Rendered by Alembic's offline mode from the same
    migrations :func:`upgrade` runs, so a catalog deployed by hand passes :func:`check_schema`.
    On SQL Server it is T-SQL with ``GO`` batch separators, for sqlcmd or SSMS.
    """
    require_dialect(dialect)
    head = head_revision()
    buffer = io.StringIO()
    config = _config(output=buffer)
    config.attributes["url"] = offline_url(dialect)
    start = "an empty database" if from_revision is None else f"revision {from_revision}"
    if from_revision != head:
        target = head if from_revision is None else f"{from_revision}:{head}"
        try:
            with _ALEMBIC_LOCK:
                command.upgrade(config, target, sql=True)
        except CommandError as exc:
            raise ValueError(f"cannot write the upgrade from {start} to {head}: {exc}") from exc
    version_table = ".".join(filter(None, (catalog_schema_name(dialect), VERSION_TABLE)))
    command_line = f"bfx catalog ddl --dialect {dialect}" + (
        f" --from-revision {from_revision}" if from_revision else ""
    )
    header = [
        f"-- {PRODUCT} catalog schema, revision {head}, dialect {dialect}",
        f"-- Generated by `{command_line}`.",
        f"-- Brings {start} to revision {head} and records it in {version_table},",
        "-- the row the provider checks before it uses the catalog.",
        "-- Run the script as a whole"
        + (" with sqlcmd or SSMS (GO separates its batches)." if dialect == "mssql" else "."),
    ]
    body = buffer.getvalue()
    if from_revision == head:
        header.append(f"-- Nothing to do: revision {head} is the newest this package knows.")
    elif dialect == "mssql":
        header.append(
            "-- All or nothing: the first error stops every later batch (SET NOEXEC ON), rolls"
        )
        header.append("-- the transaction back and ends with an error (RAISERROR, severity 16).")
        body = _all_or_nothing_tsql(body)
    return "\n".join(header) + "\n\n" + body


# -- internals ---------------------------------------------------------------------------------

_TSQL_GUARD = "IF @@ERROR <> 0 SET NOEXEC ON;"
_TSQL_FAILED = (
    f"{PRODUCT}: the catalog script failed and was rolled back; nothing was deployed."
    " The first error above says why."
)
_TSQL_FOOTER = f"""DECLARE @deployed BIT;
SET @deployed = 1; -- not executed once a batch failed (NOEXEC)
SET NOEXEC OFF;
IF @deployed IS NULL
BEGIN
    IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
    RAISERROR(N'{_TSQL_FAILED}', 16, 1);
END
ELSE
    PRINT N'{PRODUCT}: the catalog script completed.';"""


def _all_or_nothing_tsql(script: str) -> str:
    """Make a GO-separated T-SQL script all or nothing, the way deployment tools do.

    ``GO`` batches do not stop at an error: sqlcmd (without ``-b``) and SSMS go on with the next
    batch, so a failed CREATE TABLE would be followed by the rest and a COMMIT of half a schema.
    Hence ``SET XACT_ABORT ON`` (a runtime error rolls the transaction back), a check after every
    batch that turns execution off for the rest (``SET NOEXEC ON``), and a footer that turns it
    back on and reports the outcome, failing loudly when anything was skipped.
    """
    batches = [b.strip() for b in re.split(r"^GO$", script, flags=re.M)]
    out = ["SET XACT_ABORT ON;\nGO"]
    for batch in batches:
        if not batch:
            continue
        out.append(f"{batch}\nGO\n{_TSQL_GUARD}\nGO")
    out.append(f"{_TSQL_FOOTER}\nGO")
    return "\n\n".join(out) + "\n"


@cache
def _script(location: str) -> ScriptDirectory:
    return ScriptDirectory(location)


def _config(output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output)
    config.set_main_option("script_location", SCRIPT_LOCATION.replace("%", "%%"))
    return config


def _migration_context(conn: Connection, dialect: str) -> MigrationContext:
    return MigrationContext.configure(
        conn,
        opts={"version_table": VERSION_TABLE, "version_table_schema": catalog_schema_name(dialect)},
    )


def _has_version_table(conn: Connection, dialect: str) -> bool:
    return inspect(conn).has_table(VERSION_TABLE, schema=catalog_schema_name(dialect))


def _catalog_tables_exist(conn: Connection, dialect: str) -> bool:
    execution = build_schema(dialect).Execution
    return inspect(conn).has_table(execution.name, schema=execution.schema)


def _unknown(revisions: Iterable[str]) -> list[str]:
    script = _script(SCRIPT_LOCATION)
    unknown = []
    for rev in revisions:
        try:
            script.get_revision(rev)
        except CommandError:
            unknown.append(rev)
    return unknown


def _newer_error(unknown: Sequence[str], engine: Engine) -> CatalogSchemaError:
    return CatalogSchemaError(
        f"the catalog at {_where(engine)} is at schema revision {', '.join(unknown)}, which this "
        f"{PRODUCT} does not know (its newest is {head_revision()}): a newer {PRODUCT} has "
        f"upgraded it. Upgrade {PRODUCT} here to that version (pip install -U {PRODUCT})."
    )


def _missing_catalog_error(
    engine: Engine, dialect: str, *, tables_exist: bool
) -> CatalogSchemaError:
    where = _where(engine)
    fix = (
        f"run `bfx catalog init` (or have a DBA run the script from "
        f"`bfx catalog ddl --dialect {dialect}`)"
    )
    if tables_exist:
        return CatalogSchemaError(
            f"the catalog at {where} has bfx tables but no revision in {VERSION_TABLE}: they "
            f"were not created by `bfx catalog init` or its script, so their revision is "
            f"unknown. Move them aside, then {fix}."
        )
    what = "bfx schema or catalog tables" if catalog_schema_name(dialect) else "bfx catalog tables"
    return CatalogSchemaError(f"the catalog at {where} has no {what}: {fix}.")


def _catalog_dialect(engine: Engine) -> str:
    """The dialect of the catalog at ``engine``; ``ValueError`` for an unsupported engine."""
    name = engine.dialect.name
    if name not in SUPPORTED_DIALECTS:
        raise ValueError(
            f"the catalog at {_where(engine)} is a {name} database; the bfx catalog supports "
            f"{', '.join(SUPPORTED_DIALECTS)}"
        )
    return name


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
