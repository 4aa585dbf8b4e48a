"""Databricks scenarios: real ``dag.test()`` runs (the isolated Airflow of
``tests/e2e/conftest.py``, the embedded SQLite catalog) whose ``DatabricksHook`` talks real HTTP
to a local fake of the Jobs API (``fake_databricks.py``).

The e2e conftest sets up that Airflow when it is imported. When only this directory runs, this
file imports it (as ``conftest``, the name pytest gives it); in a full run pytest imports it
again when it reaches ``tests/e2e`` (it drops a non-package ``conftest`` from ``sys.modules``
first), which points the environment at a second Airflow home. Everything here therefore asks
:func:`e2e` for the module *when it runs*, never keeps the module of collection time, and no
module of this directory imports Airflow at import time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.databricks.fake_databricks import TOKEN, FakeDatabricks, serve

HERE = Path(__file__).resolve().parent
E2E_CONFTEST = HERE.parent / "e2e" / "conftest.py"
EXAMPLE_DAG = HERE.parents[1] / "example_dags" / "databricks_tables.py"


def e2e() -> ModuleType:
    """The e2e conftest module that set up the current Airflow environment."""
    found = sys.modules.get("conftest")
    if found is not None and Path(found.__file__ or "").resolve() == E2E_CONFTEST:
        return found
    spec = importlib.util.spec_from_file_location("conftest", E2E_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["conftest"] = module
    spec.loader.exec_module(module)
    return module


e2e()  # the Airflow environment, before any test module imports Airflow


@pytest.fixture(scope="session")
def dbx_airflow_db() -> Path:
    """The migrated metadata database, with the e2e DAGs, ours and the example DAG."""
    from airflow.utils import db

    conftest = e2e()
    sources = [
        conftest.EXAMPLE_DAGS / "warehouse_batch.py",
        *sorted(conftest.E2E_DAGS.glob("*.py")),
        *sorted((HERE / "dags").glob("*.py")),
        EXAMPLE_DAG,
    ]
    for source in sources:
        shutil.copy(source, conftest.DAGS_FOLDER / source.name)
    db.upgradedb()
    return Path(conftest.METADATA_DB)


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dbx_airflow_db: Path) -> Iterator[Any]:
    """The embedded SQLite catalog, a fresh file per test (as the e2e ``catalog`` fixture)."""
    from airflow_provider_bfx.routing.catalog import forget_stores

    for name in list(os.environ):
        if name.startswith("AIRFLOW__BFX__"):
            monkeypatch.delenv(name)
    path = tmp_path / "bfx_catalog.db"
    monkeypatch.delenv("AIRFLOW_CONN_BFX_CATALOG_DEFAULT", raising=False)
    monkeypatch.setenv("AIRFLOW__BFX__EMBEDDED_CATALOG_PATH", str(path))
    copies = tmp_path / "copies"
    copies.mkdir()
    monkeypatch.setenv("BFX_EXAMPLE_COPY_DIR", str(copies))
    try:
        yield e2e().Catalog("sqlite", f"sqlite:///{path}")
    finally:
        forget_stores()


@pytest.fixture
def fake_databricks(
    monkeypatch: pytest.MonkeyPatch, dbx_airflow_db: Path
) -> Iterator[FakeDatabricks]:
    """The fake Jobs API, and ``databricks_default`` pointing at it (http, token as password)."""
    fake = FakeDatabricks()
    server = serve(fake)
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATABRICKS_DEFAULT",
        json.dumps(
            {
                "conn_type": "databricks",
                "host": "127.0.0.1",
                "port": fake.port,
                "schema": "http",
                "password": TOKEN,
            }
        ),
    )
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
