"""BfxCatalogHook against real Airflow connections (``AIRFLOW_CONN_<ID>`` environment variables)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from airflow.exceptions import AirflowNotFoundException
from sqlalchemy import make_url, text

from airflow_provider_bfx.hooks import catalog as catalog_hook_module
from airflow_provider_bfx.hooks.catalog import DEFAULT_CATALOG_CONN_ID, BfxCatalogHook

EMBEDDED_NOTICE = "Using the embedded SQLite catalog at"


def define_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict | str) -> None:
    """Define an Airflow connection the way a deployment would: an AIRFLOW_CONN_ variable."""
    encoded = value if isinstance(value, str) else json.dumps(value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", encoded)


@pytest.fixture
def no_bfx_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean slate: AIRFLOW_HOME in tmp_path, no [bfx] overrides, no default connection."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    for option in ("CATALOG_CONN_ID", "EMBEDDED_CATALOG_PATH"):
        monkeypatch.delenv(f"AIRFLOW__BFX__{option}", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_BFX_CATALOG_DEFAULT", raising=False)
    # The notice is once per process; start this test as a fresh process would.
    monkeypatch.setattr(catalog_hook_module, "_embedded_notice_logged", False)
    return home


def embedded_notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == catalog_hook_module.__name__ and EMBEDDED_NOTICE in r.getMessage()
    ]


# -- SQLite -----------------------------------------------------------------------------------


def test_sqlite_connection_engine_uses_that_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_bfx_config: Path
) -> None:
    db_file = tmp_path / "catalogs" / "mine.db"
    db_file.parent.mkdir()
    define_connection(monkeypatch, "bfx_t_sqlite", {"conn_type": "sqlite", "host": str(db_file)})

    hook = BfxCatalogHook(catalog_conn_id="bfx_t_sqlite")
    engine = hook.get_catalog_engine()

    assert hook.dialect_name == "sqlite"
    assert hook.is_embedded is False
    assert engine.url.database == str(db_file)
    assert hook.get_catalog_engine() is engine  # cached per hook
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (x INTEGER)"))
        conn.execute(text("INSERT INTO probe VALUES (42)"))
        journal_mode = conn.execute(text("PRAGMA journal_mode")).scalar()
    assert journal_mode == "wal"  # the catalog engine, not a plain SQLAlchemy engine
    with sqlite3.connect(db_file) as raw:
        assert raw.execute("SELECT x FROM probe").fetchall() == [(42,)]
    engine.dispose()


def test_sqlite_uri_with_four_slashes_is_an_absolute_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_bfx_config: Path
) -> None:
    db_file = tmp_path / "uri.db"
    define_connection(monkeypatch, "bfx_t_sqlite_uri", f"sqlite:///{db_file}")

    hook = BfxCatalogHook("bfx_t_sqlite_uri")

    assert hook.sqlalchemy_url.database == str(db_file)
    conn = hook.get_conn()
    try:
        assert conn.cursor().execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()
    assert db_file.exists()
    hook.dispose()


def test_sqlite_connection_without_a_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, no_bfx_config: Path
) -> None:
    define_connection(monkeypatch, "bfx_t_sqlite_mem", {"conn_type": "sqlite", "host": ":memory:"})

    with pytest.raises(ValueError, match="bfx_t_sqlite_mem.*names no SQLite file"):
        BfxCatalogHook("bfx_t_sqlite_mem").get_catalog_engine()


def test_configured_conn_id_is_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_bfx_config: Path
) -> None:
    db_file = tmp_path / "configured.db"
    define_connection(
        monkeypatch, "bfx_t_configured", {"conn_type": "sqlite", "host": str(db_file)}
    )
    monkeypatch.setenv("AIRFLOW__BFX__CATALOG_CONN_ID", "bfx_t_configured")

    hook = BfxCatalogHook()

    assert hook.get_conn_id() == "bfx_t_configured"
    assert hook.sqlalchemy_url.database == str(db_file)


# -- PostgreSQL -------------------------------------------------------------------------------


def test_postgres_connection_engine_runs_queries(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, no_bfx_config: Path
) -> None:
    url = make_url(pg_url)
    define_connection(
        monkeypatch,
        "bfx_t_pg",
        {
            "conn_type": "postgres",
            "host": url.host,
            "port": url.port,
            "login": url.username,
            "password": url.password,
            "schema": url.database,
        },
    )

    hook = BfxCatalogHook("bfx_t_pg")
    engine = hook.get_catalog_engine()

    assert hook.dialect_name == "postgresql"
    assert engine.url.drivername == "postgresql+psycopg2"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert conn.execute(text("SELECT current_database()")).scalar() == url.database
    dbapi_conn = hook.get_conn()  # the postgres hook's own DB-API connection
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == url.username
    finally:
        dbapi_conn.close()
    hook.dispose()


def test_postgres_explicit_sqlalchemy_scheme_is_honoured(
    monkeypatch: pytest.MonkeyPatch, no_bfx_config: Path
) -> None:
    define_connection(
        monkeypatch,
        "bfx_t_pg3",
        {
            "conn_type": "postgres",
            "host": "db.example",
            "schema": "catalog",
            "extra": {"sqlalchemy_scheme": "postgresql+psycopg"},
        },
    )

    assert BfxCatalogHook("bfx_t_pg3").sqlalchemy_url.drivername == "postgresql+psycopg"


# -- SQL Server (no server here: URL only) ----------------------------------------------------


def test_mssql_connection_gives_an_mssql_url(
    monkeypatch: pytest.MonkeyPatch, no_bfx_config: Path
) -> None:
    define_connection(monkeypatch, "bfx_t_mssql", "mssql://bfx:s3cret@sqlhost:1433/catalog")

    hook = BfxCatalogHook("bfx_t_mssql")
    url = hook.sqlalchemy_url

    assert hook.dialect_name == "mssql"
    assert url.get_backend_name() == "mssql"
    assert url.drivername == "mssql+pymssql"
    assert (url.host, url.port, url.database, url.username) == ("sqlhost", 1433, "catalog", "bfx")
    assert hook.get_uri().startswith("mssql+pymssql://bfx:s3cret@sqlhost:1433/catalog")


# -- embedded default -------------------------------------------------------------------------


def test_embedded_catalog_when_default_connection_is_undefined(
    no_bfx_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=catalog_hook_module.__name__)
    expected = no_bfx_config / "bfx_catalog.db"

    first = BfxCatalogHook()
    engine = first.get_catalog_engine()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    second = BfxCatalogHook(catalog_conn_id="bfx_catalog_default")
    second.get_catalog_engine()

    assert first.is_embedded and second.is_embedded
    assert first.dialect_name == "sqlite"
    assert first.sqlalchemy_url.database == str(expected)
    assert expected.is_file()
    notices = embedded_notices(caplog)
    assert notices == [
        f"{EMBEDDED_NOTICE} {expected} because connection bfx_catalog_default is not defined"
    ]
    first.dispose()
    second.dispose()


def test_embedded_catalog_path_option(monkeypatch: pytest.MonkeyPatch, no_bfx_config: Path) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__EMBEDDED_CATALOG_PATH", "state/catalog.sqlite")

    hook = BfxCatalogHook()
    engine = hook.get_catalog_engine()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()

    expected = no_bfx_config / "state" / "catalog.sqlite"
    assert hook.sqlalchemy_url.database == str(expected)
    assert expected.is_file()  # the directory is created for it


def test_defined_default_connection_is_used_instead_of_embedded(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    no_bfx_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=catalog_hook_module.__name__)
    db_file = tmp_path / "defined.db"
    define_connection(
        monkeypatch, "bfx_catalog_default", {"conn_type": "sqlite", "host": str(db_file)}
    )

    hook = BfxCatalogHook()

    assert hook.is_embedded is False
    assert hook.sqlalchemy_url.database == str(db_file)
    assert embedded_notices(caplog) == []


# -- errors -----------------------------------------------------------------------------------


def test_unsupported_conn_type_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, no_bfx_config: Path
) -> None:
    define_connection(monkeypatch, "bfx_t_mysql", "mysql://u:p@dbhost:3306/catalog")

    with pytest.raises(ValueError) as excinfo:
        BfxCatalogHook("bfx_t_mysql").get_catalog_engine()

    message = str(excinfo.value)
    assert "'bfx_t_mysql'" in message
    assert "'mysql'" in message
    assert "postgres, mssql or sqlite" in message


def test_missing_non_default_connection_names_it(no_bfx_config: Path) -> None:
    with pytest.raises(AirflowNotFoundException, match="'bfx_t_nowhere' is not defined"):
        BfxCatalogHook("bfx_t_nowhere").get_catalog_engine()


def test_missing_configured_connection_is_not_replaced_by_embedded(
    monkeypatch: pytest.MonkeyPatch, no_bfx_config: Path
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__CATALOG_CONN_ID", "bfx_t_configured_missing")

    with pytest.raises(AirflowNotFoundException, match="bfx_t_configured_missing"):
        BfxCatalogHook().get_catalog_engine()
    assert not (no_bfx_config / "bfx_catalog.db").exists()


# -- store ------------------------------------------------------------------------------------


def test_get_store_wraps_the_catalog_engine(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, no_bfx_config: Path
) -> None:
    from airflow_provider_bfx.catalog.store import CatalogStore

    define_connection(
        monkeypatch,
        "bfx_t_store",
        {"conn_type": "sqlite", "host": make_url(sqlite_url).database},
    )

    store = BfxCatalogHook("bfx_t_store").get_store()

    assert isinstance(store, CatalogStore)


def test_the_hook_is_the_one_store_factory_and_deploys_the_embedded_catalog(
    no_bfx_config: Path,
) -> None:
    """One store factory (issue 9): a store from the hook and one from the routing are built
    alike, so the hook's store on the embedded catalog is deployed and ready, as the routing's."""
    from airflow_provider_bfx.catalog.migrate import check_schema
    from airflow_provider_bfx.catalog.store import BatchSpec
    from airflow_provider_bfx.routing import catalog as routing_catalog

    store = BfxCatalogHook().get_store()
    try:
        check_schema(store.engine)  # deployed on first use, not only through the routing
        assert store.start_batch(BatchSpec("wh", "r1")) > 0
    finally:
        store.engine.dispose()

    routing_catalog.forget_stores()
    try:
        routed = routing_catalog.get_store(DEFAULT_CATALOG_CONN_ID)
        assert routed.engine.url == store.engine.url
        assert [r.DagId for r in routed.executions("wh")] == ["wh"]
    finally:
        routing_catalog.forget_stores()


@pytest.mark.parametrize(
    "value",
    [
        {"conn_type": "postgres", "host": "db.example", "login": "u", "password": "p@ss:w/rd"},
        {"conn_type": "postgres", "host": "db", "port": 6432, "schema": "wh", "login": "u"},
        {"conn_type": "postgres", "host": "db", "schema": "wh", "extra": {"sslmode": "require"}},
        {
            "conn_type": "postgres",
            "host": "db",
            "extra": {"sqlalchemy_scheme": "postgresql+psycopg", "sqlalchemy_query": {"a": "b"}},
        },
        {"conn_type": "postgres", "host": "db", "extra": {"sqlalchemy_query": {"sslmode": "x"}}},
    ],
)
def test_postgres_url_without_the_hook_is_the_hooks_url(
    monkeypatch: pytest.MonkeyPatch, value: dict
) -> None:
    """The catalog URL is built without importing PostgresHook (issue 12), and is exactly the
    URL the hook would have given: a change in the provider fails here."""
    define_connection(monkeypatch, "bfx_pg_url", value)
    hook = BfxCatalogHook(catalog_conn_id="bfx_pg_url")
    conn = hook.get_connection("bfx_pg_url")
    expected = catalog_hook_module._catalog_url(
        "bfx_pg_url", "postgres", catalog_hook_module._hook_url(conn.get_hook()), conn.extra_dejson
    )
    assert hook.sqlalchemy_url == expected
    assert "connection_hook" not in hook.__dict__  # the provider's hook was not built
    assert hook.connection_hook is not None  # and still is, on demand
