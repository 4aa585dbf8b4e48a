"""SQLAlchemy engines for the catalog, configured for concurrent task processes.

SQLite needs three things to serve many Airflow task processes at once:

* WAL journal mode, so that readers never block the single writer;
* a busy timeout, so that a writer waits for the lock instead of failing at once;
* ``BEGIN IMMEDIATE`` for every transaction, so that the write lock is taken *before* the
  transition reads its facts. With pysqlite's default deferred ``BEGIN`` two processes can both
  read, then both try to upgrade to a write lock, and one fails with ``database is locked``
  regardless of the timeout. Taking the lock up front serialises transitions, which is exactly
  the "row lock on the batch row" guarantee of the other engines, at file granularity.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url

from airflow_provider_bfx.catalog import pipeline
from airflow_provider_bfx.catalog.errors import sqlite_busy

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_catalog_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """Create an engine for the catalog at ``url`` (any SQLAlchemy URL of a supported engine)."""
    url = make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, **engine_kwargs)
    # No pool_pre_ping: it costs a round trip per transition. A dropped connection raises a
    # transient error instead, and the store re-runs the whole transition on a fresh one.
    engine_kwargs.setdefault("pool_pre_ping", False)
    if pipeline.foldable(url.get_driver_name(), backend) and "isolation_level" not in engine_kwargs:
        # BEGIN and result-less writes folded into fewer round trips (decision 0101).
        connect_args = dict(engine_kwargs.pop("connect_args", {}))
        connect_args.setdefault("connection_factory", pipeline.connection_factory())
        engine = create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args=connect_args, **engine_kwargs
        )
        return pipeline.install(engine)
    return create_engine(url, **engine_kwargs)


def _sqlite_engine(url: URL, **engine_kwargs: Any) -> Engine:
    connect_args = dict(engine_kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_engine(url, connect_args=connect_args, **engine_kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if url.database and url.database != ":memory:":
                _switch_to_wal(cursor)
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _switch_to_wal(cursor: Any) -> None:
    """Put the database file in WAL mode, retrying while other connections do the same.

    The mode is stored in the file, so this is a read for every connection but the first. The
    switch itself needs a moment of exclusive access, and SQLite answers ``database is locked``
    at once, without consulting the busy handler, when another connection is switching or
    recovering at that instant: many task processes opening a fresh catalog together hit exactly
    that. So the switch is retried within the busy timeout, like every other lock wait here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() == "wal":
                return
            (mode,) = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() == "wal":
                return
            # SQLite may answer with the old mode instead of an error: another connection won.
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"could not switch the catalog to WAL: {mode}")
        except sqlite3.OperationalError as exc:
            if not sqlite_busy(exc) or time.monotonic() > deadline:
                raise  # not SQLITE_BUSY/SQLITE_LOCKED (by its code): not another connection
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
