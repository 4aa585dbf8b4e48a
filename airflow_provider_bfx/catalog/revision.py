"""The catalog's schema revision, read without importing Alembic.

Every task process checks the catalog's schema once, before its first statement, and so does
every process that deploys the embedded SQLite catalog. Importing Alembic for that costs 0.1 s
(0.4 s without compiled bytecode) per task process, more than every catalog statement of the
task together (issue 12). So the check's common case lives here, with no Alembic import: one
``SELECT`` of the version table, compared with :data:`HEAD_REVISION`. On any other answer (no
table, an older or a newer revision, a database error) the caller asks
:func:`.migrate.check_schema`, which imports Alembic to say exactly what is wrong and which
command fixes it (``txn.Catalog.transaction``, ``BfxCatalogHook.get_store``).

:data:`HEAD_REVISION` must name the newest migration in ``migrations/versions``; a test
(``tests/unit/catalog/test_migrations.py``) compares it with Alembic's own head.
"""

from __future__ import annotations

from sqlalchemy import Column, Engine, MetaData, String, Table, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from airflow_provider_bfx.catalog.compiled import CompiledStatement, shared_statement
from airflow_provider_bfx.catalog.schema import SCHEMA_NAME

#: The newest migration of ``migrations/versions`` (the revision this package expects).
HEAD_REVISION = "0003"

#: Alembic's version table, kept in the catalog's own schema under a name of its own, so that it
#: never collides with the ``alembic_version`` of another application in the same database.
VERSION_TABLE = "bfx_alembic_version"


def catalog_schema_name(dialect: str) -> str | None:
    """The schema holding the catalog's tables: ``bfx``, none on SQLite (one file, one schema)."""
    return None if dialect == "sqlite" else SCHEMA_NAME


def version_table(dialect: str) -> Table:
    return Table(
        VERSION_TABLE,
        MetaData(),
        Column("version_num", String(32), primary_key=True),
        schema=catalog_schema_name(dialect),
    )


def revision_query(dialect: Dialect) -> CompiledStatement:
    """``SELECT version_num`` of the version table, compiled once per process for the kind of
    ``dialect`` (:mod:`.compiled`; warmed before a fork by :mod:`.warm`)."""
    return shared_statement(
        "schema_revision", dialect, lambda: select(version_table(dialect.name).c.version_num)
    )


def is_current(engine: Engine) -> bool:
    """Whether the catalog at ``engine`` records exactly :data:`HEAD_REVISION` (one query).

    A database that cannot be reached raises the driver's error as it is (one attempt: the
    caller classifies it); a failing ``SELECT`` (no version table) or another revision is
    False: the caller then asks :mod:`.migrate`, which says what is wrong."""
    statement = revision_query(engine.dialect)
    with engine.connect() as conn:
        try:
            found = tuple(row.version_num for row in statement.rows(conn, {}))
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            return False
    return found == (HEAD_REVISION,)
