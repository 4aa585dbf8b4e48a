"""The Airflow side of the catalog: which database it is, and an engine to reach it.

The catalog is an ordinary database the user owns, so it is reached through an ordinary Airflow
connection (``postgres``, ``mssql`` or ``sqlite``) and that connection's own hook: whatever the
Postgres or SQL Server provider knows about its connection (extras, IAM tokens, the SQLAlchemy
scheme) is honoured here too, instead of being re-implemented.

When the configured connection id is the default one and no such connection is defined, the
catalog is an embedded SQLite file under ``AIRFLOW_HOME``: a first run needs no setup. That is
said once per process in the log, so nobody mistakes it for the production catalog.

No SQL lives here: the hook hands a configured :class:`sqlalchemy.Engine` to
:class:`airflow_provider_bfx.catalog.store.CatalogStore`, which owns every statement.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.exceptions import AirflowNotFoundException
from airflow.providers.common.sql.hooks.sql import DbApiHook
from sqlalchemy import URL, Engine, make_url

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.exceptions import BfxError
from airflow_provider_bfx.routing.settings import DEFAULT_CATALOG_CONN_ID as DEFAULT_CATALOG_CONN_ID
from airflow_provider_bfx.routing.settings import SECTION
from airflow_provider_bfx.routing.settings import airflow_conf as _conf

if TYPE_CHECKING:
    from airflow_provider_bfx.catalog.store import CatalogStore

log = logging.getLogger(__name__)

EMBEDDED_CATALOG_FILENAME = "bfx_catalog.db"

#: Airflow connection type -> SQLAlchemy backend name (``URL.get_backend_name()``).
SUPPORTED_CONN_TYPES: dict[str, str] = {
    "postgres": "postgresql",
    "mssql": "mssql",
    "sqlite": "sqlite",
}
_SUPPORTED_TYPES_TEXT = "postgres, mssql or sqlite"
#: The PostgreSQL driver used unless the connection's extra names a ``sqlalchemy_scheme``.
DEFAULT_POSTGRES_DRIVERNAME = "postgresql+psycopg2"


def _connection_not_found_errors() -> tuple[type[Exception], ...]:
    """What a lookup of an undefined connection raises: one class on Airflow 3.3, and possibly
    a separate Task SDK class on older 3.x."""
    errors: list[type[Exception]] = [AirflowNotFoundException]
    try:
        from airflow.sdk.exceptions import AirflowNotFoundException as sdk_not_found
    except ImportError:
        pass
    else:
        if sdk_not_found not in errors:
            errors.append(sdk_not_found)
    return tuple(errors)


_CONNECTION_NOT_FOUND = _connection_not_found_errors()

_embedded_notice_logged = False
_embedded_notice_lock = threading.Lock()


def configured_catalog_conn_id() -> str:
    """The catalog connection id of ``[bfx] catalog_conn_id``."""
    value = _conf().get(SECTION, "catalog_conn_id", fallback=DEFAULT_CATALOG_CONN_ID)
    return value or DEFAULT_CATALOG_CONN_ID


def _airflow_home() -> str:
    try:
        from airflow.configuration import get_airflow_home
    except ImportError:
        return os.path.expanduser(os.path.expandvars(os.environ.get("AIRFLOW_HOME", "~/airflow")))
    return str(get_airflow_home())


def embedded_catalog_path() -> str:
    """Absolute path of the embedded SQLite catalog (``[bfx] embedded_catalog_path``).

    Empty means ``$AIRFLOW_HOME/bfx_catalog.db``; a relative path is taken relative to
    ``AIRFLOW_HOME``, so every process of one deployment resolves it to the same file.
    """
    home = _airflow_home()
    configured = _conf().get(SECTION, "embedded_catalog_path", fallback="") or ""
    if not configured.strip():
        return os.path.abspath(os.path.join(home, EMBEDDED_CATALOG_FILENAME))
    path = os.path.expanduser(os.path.expandvars(configured.strip()))
    return os.path.abspath(os.path.join(home, path))


def _log_embedded_notice_once(path: str) -> None:
    global _embedded_notice_logged
    with _embedded_notice_lock:
        if _embedded_notice_logged:
            return
        _embedded_notice_logged = True
    log.info(
        "Using the embedded SQLite catalog at %s because connection %s is not defined",
        path,
        DEFAULT_CATALOG_CONN_ID,
    )


class CatalogConnectionLookupError(BfxError, RuntimeError):
    """Looking the catalog connection up failed for another reason than "not defined"."""


def _confirm_not_defined(conn_id: str) -> Any | None:
    """Ask every secrets backend of this process again, one by one, before the embedded default.

    Airflow's own lookup logs and skips a backend that raises and then reports "not defined":
    a metadata DB that refused the query (or forbade a commit, as in the scheduler loop), an
    unreachable API server or vault would all turn into a silent switch to another catalog than
    the workers'. The embedded catalog applies only when every backend answered "not here"
    (docs/decisions/0080). Returns the connection if a backend has it after all.
    """
    try:
        from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded
    except ImportError:  # pragma: no cover - another Task SDK layout: trust Airflow's answer
        return None
    for backend in ensure_secrets_backend_loaded():
        try:
            conn = backend.get_connection(conn_id=conn_id)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CatalogConnectionLookupError(
                f"Looking up the BFX catalog connection {conn_id!r} failed in the secrets"
                f" backend {type(backend).__name__}: {first}. The embedded SQLite catalog is used"
                f" only when the connection is defined nowhere, so nothing runs until the"
                f" lookup works (check that backend, or the API server a task asks)."
            ) from exc
        if conn is not None:
            return conn
    return None


class _CatalogTarget(NamedTuple):
    """Where the catalog is, resolved once per hook."""

    url: URL
    dialect_name: str
    #: The defined connection; ``None`` for the embedded catalog. Its own hook (``get_hook``)
    #: is built only when asked for (:attr:`BfxCatalogHook.connection_hook`).
    conn: Any
    #: The SQLite file of the embedded catalog; ``None`` for a defined connection.
    embedded_path: str | None


class BfxCatalogHook(DbApiHook):
    """Reach the BFX catalog through an Airflow connection.

    :param catalog_conn_id: a ``postgres``, ``mssql`` or ``sqlite`` connection. Defaults to
        ``[bfx] catalog_conn_id``. If that resolves to ``bfx_catalog_default`` and the
        connection is not defined, the embedded SQLite catalog is used.

    PostgreSQL is reached with psycopg2 unless the connection's extra sets ``sqlalchemy_scheme``
    (e.g. ``postgresql+psycopg``); SQL Server with the SQL Server hook's scheme
    (``mssql+pymssql`` unless the extra says otherwise).
    """

    conn_name_attr = "catalog_conn_id"
    default_conn_name = DEFAULT_CATALOG_CONN_ID
    hook_name = "BFX catalog"

    def __init__(self, catalog_conn_id: str | None = None, **kwargs: Any) -> None:
        kwargs[self.conn_name_attr] = catalog_conn_id or configured_catalog_conn_id()
        super().__init__(**kwargs)
        self.catalog_conn_id: str = kwargs[self.conn_name_attr]
        self._catalog_engine: Engine | None = None
        self._engine_lock = threading.Lock()

    # -- resolution -------------------------------------------------------------------------

    @cached_property
    def _target(self) -> _CatalogTarget:
        conn_id = self.catalog_conn_id
        try:
            conn = self.get_connection(conn_id)
        except _CONNECTION_NOT_FOUND as err:
            if conn_id != DEFAULT_CATALOG_CONN_ID:
                raise type(err)(
                    f"The BFX catalog connection {conn_id!r} is not defined. Define it as a "
                    f"{_SUPPORTED_TYPES_TEXT} connection, or unset [bfx] catalog_conn_id to use "
                    f"the embedded SQLite catalog."
                ) from err
            found = _confirm_not_defined(conn_id)
            if found is None:
                return self._embedded_target()
            conn = found

        conn_type = (conn.conn_type or "").lower()
        if conn_type not in SUPPORTED_CONN_TYPES:
            raise ValueError(
                f"The BFX catalog connection {conn_id!r} has conn_type {conn.conn_type!r}; "
                f"the catalog needs a {_SUPPORTED_TYPES_TEXT} connection."
            )
        url = _postgres_url(conn) if conn_type == "postgres" else None
        if url is None:
            self.__dict__["connection_hook"] = conn.get_hook()
            url = _hook_url(self.connection_hook)
        url = _catalog_url(conn_id, conn_type, url, conn.extra_dejson)
        self._connection = conn
        return _CatalogTarget(url, SUPPORTED_CONN_TYPES[conn_type], conn, None)

    @cached_property
    def connection_hook(self) -> DbApiHook | None:
        """The catalog connection's own hook (``PostgresHook``, ``MsSqlHook``, ``SqliteHook``);
        ``None`` for the embedded catalog. Built on first use: the routing never needs it."""
        conn = self._target.conn
        return None if conn is None else conn.get_hook()

    def _embedded_target(self) -> _CatalogTarget:
        from airflow.sdk import Connection

        path = embedded_catalog_path()
        _log_embedded_notice_once(path)
        # Stand-in connection so that DbApiHook's connection-based helpers keep working.
        self._connection = Connection(conn_id=self.catalog_conn_id, conn_type="sqlite", host=path)
        return _CatalogTarget(URL.create("sqlite", database=path), "sqlite", None, path)

    # -- public API -------------------------------------------------------------------------

    @property
    def sqlalchemy_url(self) -> URL:
        """SQLAlchemy URL of the catalog (password included: render it with care)."""
        return self._target.url

    @property
    def dialect_name(self) -> str:
        """``postgresql``, ``mssql`` or ``sqlite``."""
        return self._target.dialect_name

    @property
    def is_embedded(self) -> bool:
        """Whether this is the embedded SQLite catalog (no connection defined)."""
        return self._target.embedded_path is not None

    @cached_property
    def placeholder(self) -> str:
        db_hook = self.connection_hook
        return db_hook.placeholder if db_hook is not None else "?"

    def get_uri(self) -> str:
        return self.sqlalchemy_url.render_as_string(hide_password=False)

    def get_catalog_engine(self) -> Engine:
        """The catalog engine, created once per hook (for SQLite: WAL, busy timeout, and
        ``BEGIN IMMEDIATE``, see :mod:`airflow_provider_bfx.catalog.engine`)."""
        with self._engine_lock:
            if self._catalog_engine is None:
                target = self._target
                if target.embedded_path is not None:
                    os.makedirs(os.path.dirname(target.embedded_path), exist_ok=True)
                self._catalog_engine = create_catalog_engine(target.url)
            return self._catalog_engine

    def get_sqlalchemy_engine(self, engine_kwargs: dict[str, Any] | None = None) -> Engine:
        if not engine_kwargs:
            return self.get_catalog_engine()
        return create_catalog_engine(self.sqlalchemy_url, **engine_kwargs)

    def get_conn(self) -> Any:
        """A DB-API connection to the catalog.

        PostgreSQL and SQL Server: the connection's own hook's ``get_conn()``. SQLite: a raw
        connection of the catalog engine, so that the busy timeout and WAL settings apply (the
        SQLite hook's ``get_conn`` does not set them).
        """
        target = self._target
        db_hook = self.connection_hook
        if db_hook is not None and target.dialect_name != "sqlite":
            return db_hook.get_conn()
        return self.get_catalog_engine().raw_connection()

    def get_store(self, **store_kwargs: Any) -> CatalogStore:
        """A :class:`~airflow_provider_bfx.catalog.store.CatalogStore` over the catalog engine.

        The one place a store is built from a connection: the routing caches what this returns
        (:func:`airflow_provider_bfx.routing.catalog.get_store`), so that a store from here and
        one from the routing behave alike. The embedded SQLite catalog is deployed on first use,
        so that a first ``airflow dags test`` needs no setup (decision 0011); a catalog behind a
        defined connection never is. A failure to deploy it is classified like every catalog
        error: misconfigured or unavailable (decision 0090). ``store_kwargs`` go to the store's
        constructor unchanged.
        """
        from sqlalchemy.exc import DBAPIError

        from airflow_provider_bfx.catalog import revision
        from airflow_provider_bfx.catalog.errors import catalog_error
        from airflow_provider_bfx.catalog.store import CatalogStore

        engine = self.get_catalog_engine()
        if self.is_embedded:
            try:
                # Deployed already (the common case): one query, no Alembic import
                # (catalog/revision.py), and the store need not check the schema again.
                if not revision.is_current(engine):
                    from airflow_provider_bfx.catalog.migrate import upgrade

                    upgrade(engine)
            except DBAPIError as exc:
                raise catalog_error(exc, engine, "deploying the embedded catalog") from exc
            store_kwargs.setdefault("check_schema", False)
        return CatalogStore(engine, **store_kwargs)

    def dispose(self) -> None:
        """Close the pooled connections of the catalog engine, if one was created."""
        with self._engine_lock:
            if self._catalog_engine is not None:
                self._catalog_engine.dispose()
                self._catalog_engine = None


def _hook_url(db_hook: Any) -> URL:
    """The SQLAlchemy URL a connection's own hook builds."""
    try:
        return make_url(db_hook.sqlalchemy_url)
    except (AttributeError, NotImplementedError):
        return make_url(db_hook.get_uri())


def _postgres_url(conn: Any) -> URL | None:
    """``PostgresHook.sqlalchemy_url`` of ``conn``, built from the same fields without
    importing the hook: its module imports psycopg 3, about a quarter of a second in every task
    process that only needs the URL (issue 12). ``None`` (ask the hook) when the connection
    wants what only the hook does: IAM tokens, or a ``sqlalchemy_query`` that is not a mapping
    (the hook's own error says so). ``tests/unit/hooks`` holds it equal to the hook's URL."""
    extra = conn.extra_dejson
    query = extra.get("sqlalchemy_query", {})
    if extra.get("iam") or not isinstance(query, dict):
        return None
    text = lambda v: None if v is None else str(v)  # noqa: E731 - the hook's __cast_nullable
    return URL.create(
        drivername=extra.get("sqlalchemy_scheme") or "postgresql",
        username=text(conn.login),
        password=text(conn.password),
        host=text(conn.host),
        port=None if conn.port is None else int(conn.port),
        database=text(conn.schema) or None,
        query=query,
    )


def _catalog_url(conn_id: str, conn_type: str, url: URL, extra: dict[str, Any]) -> URL:
    """The SQLAlchemy URL of a connection (as its own hook builds it), fit for the catalog."""
    if conn_type == "postgres":
        if not extra.get("sqlalchemy_scheme"):
            url = url.set(drivername=DEFAULT_POSTGRES_DRIVERNAME)
    elif conn_type == "sqlite":
        url = _sqlite_file_url(conn_id, url)

    expected = SUPPORTED_CONN_TYPES[conn_type]
    if url.get_backend_name() != expected:
        raise ValueError(
            f"The BFX catalog connection {conn_id!r} ({conn_type}) gives the SQLAlchemy URL "
            f"scheme {url.drivername!r}; expected a {expected!r} scheme."
        )
    return url


def _sqlite_file_url(conn_id: str, url: URL) -> URL:
    """Normalise the SQLite hook's URL to ``sqlite:////abs/path`` (or a relative file)."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise ValueError(
            f"The BFX catalog connection {conn_id!r} names no SQLite file (host is empty or "
            f":memory:); the catalog must be a file that every task process can open."
        )
    # ``sqlite:////abs`` in AIRFLOW_CONN_* becomes ``sqlite://///abs`` in the SQLite hook's URI.
    if database.startswith("//"):
        database = "/" + database.lstrip("/")
    return url.set(drivername="sqlite", database=database)
