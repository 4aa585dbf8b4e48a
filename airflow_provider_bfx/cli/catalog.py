"""``bfx catalog init|upgrade|ddl``: deploy, upgrade or script the catalog schema.

``init`` and ``upgrade`` reach the catalog through ``--url`` (any SQLAlchemy URL, no Airflow
needed) or the Airflow connection of ``--conn-id`` (default: the provider's configured catalog
connection). ``ddl`` needs neither a database nor Airflow: it prints the script a DBA runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import (
    check_schema,
    current_revision,
    head_revision,
    offline_sql,
    require_dialect,
    upgrade,
)
from airflow_provider_bfx.catalog.schema import SUPPORTED_DIALECTS
from airflow_provider_bfx.cli.main import EXIT_OK, EXIT_USAGE, CliError, error_line


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    catalog = subparsers.add_parser(
        "catalog",
        help="create, upgrade or script the catalog schema",
        description="Create, upgrade or script the catalog schema (tables in schema bfx).",
    )
    verbs = catalog.add_subparsers(title="catalog commands", metavar="VERB", required=True)

    init = verbs.add_parser(
        "init",
        help="create the catalog schema in an empty database",
        description="Create schema bfx, its tables and indexes at the newest revision. "
        "On a catalog that is already initialised it changes nothing.",
    )
    _add_target_arguments(init)
    init.set_defaults(func=run_init)

    up = verbs.add_parser(
        "upgrade",
        help="bring the catalog schema to this package's revision",
        description="Apply the migrations the catalog lacks (creating it if it is empty).",
    )
    _add_target_arguments(up)
    up.set_defaults(func=run_upgrade)

    ddl = verbs.add_parser(
        "ddl",
        help="print the SQL script a DBA runs instead of init/upgrade",
        description="Print the SQL script that creates the catalog (or, with --from-revision, "
        "upgrades it) on the given engine. Needs no database.",
    )
    ddl.add_argument("--dialect", required=True, choices=SUPPORTED_DIALECTS)
    ddl.add_argument(
        "--from-revision",
        metavar="REV",
        help="write only the upgrade from REV, the revision the catalog is at",
    )
    ddl.set_defaults(func=run_ddl)


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--url",
        metavar="SQLALCHEMY_URL",
        help="the catalog database, e.g. postgresql+psycopg2://user:pw@host/db or "
        "sqlite:////path/catalog.db",
    )
    target.add_argument(
        "--conn-id",
        metavar="CONN_ID",
        help="the Airflow connection of the catalog (default: [bfx] catalog_conn_id)",
    )


def run_init(args: argparse.Namespace) -> int:
    engine, where = _open_catalog(args)
    try:
        head = head_revision()
        before = current_revision(engine)
        if before is None:
            _upgrade(engine, where)
            print(f"initialised the catalog at {where}: revision (none) -> {head}")
        else:
            check_schema(engine)  # older or newer: says so, and which command fixes it
            print(f"the catalog at {where} is already initialised (revision {head}); no change")
        return EXIT_OK
    finally:
        engine.dispose()


def run_upgrade(args: argparse.Namespace) -> int:
    engine, where = _open_catalog(args)
    try:
        before = current_revision(engine)
        _upgrade(engine, where)
        after = current_revision(engine)
        if before == after:
            print(f"the catalog at {where} is already at revision {after}; no change")
        else:
            print(f"upgraded the catalog at {where}: revision {before or '(none)'} -> {after}")
        return EXIT_OK
    finally:
        engine.dispose()


def run_ddl(args: argparse.Namespace) -> int:
    try:
        sql = offline_sql(args.dialect, from_revision=args.from_revision)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    sys.stdout.write(sql)
    return EXIT_OK


def _open_catalog(args: argparse.Namespace) -> tuple[Engine, str]:
    """The catalog engine named by ``--url`` or ``--conn-id``, and where it is (no password),
    after one connection proves it is reachable."""
    if args.url:
        try:
            url = make_url(args.url)
            # Checked before create_engine, which would first complain about a missing driver.
            require_dialect(url.get_backend_name())
            engine = create_catalog_engine(url)
        except (ArgumentError, ImportError, ValueError) as exc:
            raise CliError(f"cannot use the catalog URL: {error_line(exc)}", EXIT_USAGE) from exc
        where = engine.url.render_as_string(hide_password=True)
    else:
        engine, conn_id = _engine_from_airflow(args.conn_id)
        where = f"{engine.url.render_as_string(hide_password=True)} (Airflow connection {conn_id})"
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        raise CliError(f"cannot connect to the catalog at {where}: {error_line(exc)}") from exc
    return engine, where


def _engine_from_airflow(conn_id: str | None) -> tuple[Engine, str]:
    # Imported here: `bfx catalog ddl` and `--url` must work without Airflow.
    try:
        from airflow_provider_bfx.hooks.catalog import BfxCatalogHook

        hook = BfxCatalogHook(catalog_conn_id=conn_id)
        return hook.get_catalog_engine(), hook.catalog_conn_id
    except Exception as exc:  # an undefined connection, Airflow not configured, a bad extra...
        name = f"connection {conn_id!r}" if conn_id else "the configured catalog connection"
        raise CliError(
            f"cannot open the catalog through Airflow {name}: {error_line(exc)} "
            f"(or pass --url SQLALCHEMY_URL)"
        ) from exc


def _upgrade(engine: Engine, where: str) -> None:
    # This command reports what it did itself; Alembic's INFO lines would only repeat it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        upgrade(engine)
    except DBAPIError as exc:
        raise CliError(f"could not migrate the catalog at {where}: {error_line(exc)}") from exc
