"""Alembic environment of the catalog, driven by :mod:`airflow_provider_bfx.catalog.migrate`.

There is no ``alembic.ini``: ``migrate`` builds the :class:`alembic.config.Config` in code and
hands over what this script needs in ``config.attributes``:

* ``connection``: an open SQLAlchemy connection, inside a transaction the caller commits
  (online mode: ``bfx catalog init|upgrade``);
* ``url``: a driverless URL such as ``mssql://`` that only names the dialect (offline mode:
  ``bfx catalog ddl``, which never connects).

The version table lives with the catalog (``bfx.bfx_alembic_version``; unqualified on SQLite),
so the catalog stays self-describing and never collides with another application's Alembic
table. Alembic writes that table before the first revision runs, which is why the schema
``bfx`` is created here rather than in revision 0001.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import inspect, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateSchema

from airflow_provider_bfx.catalog.migrate import (
    VERSION_TABLE,
    catalog_schema_name,
    offline_url,
)
from airflow_provider_bfx.catalog.schema import SCHEMA_NAME


def _configure_options(dialect: str) -> dict[str, Any]:
    return {
        "version_table": VERSION_TABLE,
        "version_table_schema": catalog_schema_name(dialect),
        # One transaction for the whole upgrade, on SQLite too (its DDL is transactional).
        "transactional_ddl": True,
        "target_metadata": None,
    }


def run_migrations_offline() -> None:
    """Write the SQL script to ``config.output_buffer`` (``bfx catalog ddl``)."""
    url = make_url(context.config.attributes.get("url") or offline_url("sqlite"))
    dialect = url.get_backend_name()
    context.configure(url=url, literal_binds=True, **_configure_options(dialect))
    creates_schema = (
        catalog_schema_name(dialect) is not None
        and context.get_starting_revision_argument() is None
    )
    if creates_schema and dialect != "mssql":
        # A script from an empty database: create the schema first (unless a DBA did).
        context.execute(CreateSchema(SCHEMA_NAME, if_not_exists=True))
    with context.begin_transaction():
        if creates_schema and dialect == "mssql":
            # T-SQL wants CREATE SCHEMA alone in its batch; through EXEC it is, and so it can
            # sit inside the script's one transaction, and be skipped when a DBA created the
            # schema beforehand (with the owner and grants they chose).
            context.execute(
                f"IF SCHEMA_ID(N'{SCHEMA_NAME}') IS NULL EXEC(N'CREATE SCHEMA {SCHEMA_NAME}')"
            )
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the database behind ``config.attributes["connection"]``."""
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the bfx catalog migrations run through airflow_provider_bfx.catalog.migrate "
            "(bfx catalog init|upgrade), not the alembic command line"
        )
    dialect = connection.dialect.name
    schema = catalog_schema_name(dialect)
    # Checked first so that a schema a DBA created (with the grants they chose) is used as is,
    # and so that a role without CREATE SCHEMA rights can still initialise it.
    if schema is not None and not inspect(connection).has_schema(schema):
        connection.execute(CreateSchema(schema))
    context.configure(connection=connection, **_configure_options(dialect))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
