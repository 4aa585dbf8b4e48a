"""The three catalog configurations a deployment test runs against, and a reader of its rows.

* ``metadata``: a PostgreSQL catalog whose connection is added with ``airflow connections add``
  (kept in Airflow's metadata DB), deployed with ``bfx catalog init``: the CLI must resolve the
  connection as Airflow does.
* ``env``: the same, with the connection in ``AIRFLOW_CONN_BFX_CATALOG_DEFAULT``.
* ``embedded``: no connection at all: the embedded SQLite file under ``AIRFLOW_HOME``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from airflow_provider_bfx.catalog.store import CatalogStore
from tests.databases import drop_database
from tests.deployment.harness import Deployment

KINDS = ("metadata", "env", "embedded")


@dataclass
class CatalogSetup:
    kind: str
    pg_server_url: str
    database: str | None = None
    _engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def create(cls, kind: str, pg_server_url: str) -> CatalogSetup:
        setup = cls(kind, pg_server_url)
        if kind != "embedded":
            setup.database = f"bfx_cat_{uuid.uuid4().hex[:10]}"
            admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {setup.database}"))
            admin.dispose()
        return setup

    @property
    def url(self) -> str:
        assert self.database is not None
        base = make_url(self.pg_server_url)
        return base.set(drivername="postgresql", database=self.database).render_as_string(
            hide_password=False
        )

    def env(self) -> dict[str, str]:
        """Extra environment of the deployment."""
        return {"AIRFLOW_CONN_BFX_CATALOG_DEFAULT": self.url} if self.kind == "env" else {}

    def after_start(self, deployment: Deployment) -> None:
        """Define the connection where this kind keeps it, and deploy the schema with the CLI."""
        if self.kind == "metadata":
            added = deployment.run_cli(
                "airflow", "connections", "add", "bfx_catalog_default", "--conn-uri", self.url
            )
            assert added.returncode == 0, added.stderr
        if self.kind != "embedded":
            init = deployment.run_cli("bfx", "catalog", "init")
            assert init.returncode == 0, init.stdout + init.stderr
            # The CLI must have deployed THIS catalog, not an embedded file in its place.
            assert not (Path(deployment.airflow_home) / "bfx_catalog.db").exists()

    def store(self, deployment: Deployment) -> CatalogStore:
        if self._engine is None:
            if self.kind == "embedded":
                path = Path(deployment.airflow_home) / "bfx_catalog.db"
                self._engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
            else:
                self._engine = create_engine(
                    make_url(self.url).set(drivername="postgresql+psycopg2"), poolclass=NullPool
                )
        return CatalogStore(self._engine)

    def rows(self, deployment: Deployment, dag_id: str, run_id: str | None = None) -> list[Any]:
        return list(self.store(deployment).executions(dag_id, run_id))

    def task_rows(self, deployment: Deployment, dag_id: str, run_id: str) -> dict[str, Any]:
        """The latest row of each unmapped task of one run, by task id."""
        latest: dict[str, Any] = {}
        for row in self.rows(deployment, dag_id, run_id):
            if row.TaskId is not None:
                latest[row.TaskId] = row
        return latest

    def batch_row(self, deployment: Deployment, dag_id: str, run_id: str) -> Any:
        (row,) = [r for r in self.rows(deployment, dag_id, run_id) if r.TaskId is None]
        return row

    def drop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self.database is not None:
            admin = create_engine(
                self.pg_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool
            )
            drop_database(admin, self.database)
            admin.dispose()


def ledger(folder: Path, dag_id: str) -> list[str]:
    path = folder / f"{dag_id}.ledger"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def ran(lines: Sequence[str], run_id: str) -> list[str]:
    """What the ledger says ran in one run, in order."""
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == run_id]


def wait_batch_closed(
    catalog: CatalogSetup, deployment: Deployment, dag_id: str, run_id: str, timeout: float = 90
) -> Any:
    """The batch row of a run once its EndTime is set (the DAG processor runs the DAG callback
    a few seconds after the scheduler ends the run)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        row = catalog.batch_row(deployment, dag_id, run_id)
        if row.EndTime is not None:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"batch of {dag_id}/{run_id} not closed after {timeout} s: {row}")
        time.sleep(1)
