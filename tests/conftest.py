"""Catalog databases for tests: a fresh SQLite file, a fresh PostgreSQL database, or either.

* ``sqlite_url``: ``sqlite:///<tmp>/catalog.db``, a file that does not exist yet (no schema).
* ``pg_url``: a new, empty PostgreSQL database per test, created through the admin URL in
  ``BFX_TEST_PG_URL`` (``scripts/test`` sets it up) and dropped ``WITH (FORCE)`` afterwards.
  Without a reachable server the test FAILS under ``CI=true`` and is skipped elsewhere (with a
  hint to run ``scripts/test``): CI must never pass by skipping the PostgreSQL half.
* ``catalog_url``: both of the above, ids ``sqlite`` and ``postgresql``.

Marking: every test that uses ``pg_url`` directly gets the ``postgres`` marker at collection
(``pytest_collection_modifyitems`` below); the ``postgresql`` case of ``catalog_url`` carries it
through its fixture parameter. ``-m "not postgres"`` therefore runs the SQLite half only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.databases import drop_database

PG_ADMIN_URL_ENV = "BFX_TEST_PG_URL"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _postgres_unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable ({reason}); run scripts/test to set it up")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin_url = os.environ.get(PG_ADMIN_URL_ENV, "").strip()
    if not admin_url:
        _postgres_unavailable(f"{PG_ADMIN_URL_ENV} is not set")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    shown = make_url(admin_url).render_as_string(hide_password=True)
    try:
        conn = admin.connect()
    except OperationalError as err:
        admin.dispose()
        _postgres_unavailable(f"cannot connect to {shown}: {err.orig}")
    name = f"bfx_test_{uuid.uuid4().hex[:16]}"
    with conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)
        admin.dispose()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def catalog_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(autouse=True)
def _process_context_restored() -> Iterator[None]:
    """``bfx``'s ``main()`` marks the process an Airflow server context
    (``_AIRFLOW_PROCESS_CONTEXT=server``), as the console script's process is. Taken back after
    every test, so that a test calling ``main()`` does not change how a later test in the same
    process looks connections up (the server context adds Airflow's metadata DB backend)."""
    before = os.environ.get("_AIRFLOW_PROCESS_CONTEXT")
    yield
    if before is None:
        os.environ.pop("_AIRFLOW_PROCESS_CONTEXT", None)
    else:
        os.environ["_AIRFLOW_PROCESS_CONTEXT"] = before
