"""Real Airflow runs for end-to-end tests: ``dag.test()`` in this process, a real catalog.

One isolated Airflow per pytest session: ``AIRFLOW_HOME``, a SQLite metadata database (migrated
once, ~5 s) and a dags folder holding ``example_dags/warehouse_batch.py`` and the small DAGs of
``tests/e2e/dags/``. The environment is set when this file is imported, which pytest does before
it imports any test module under ``tests/e2e`` and, with the default ``testpaths``, before the
other test modules import Airflow (``e2e`` sorts before ``test_*.py``). If Airflow was imported
earlier anyway (an explicit path order on the command line), its ORM is re-pointed at this
database.

DAGs are loaded through a ``DagBag`` so that the provider's cluster policy (entry point
``airflow.policy``) routes them exactly as in production, and the DAG callbacks the policy
installs close the batch when ``dag.test()`` ends the run. Nothing of Airflow or the catalog is
mocked.

The catalog is the ``catalog`` fixture: ``sqlite`` is the EMBEDDED catalog (no connection
defined; ``[bfx] embedded_catalog_path`` points at a fresh file per test, and the routing deploys
it on first use), ``postgresql`` a fresh database per test from ``pg_url`` defined as the Airflow
connection ``bfx_catalog_default`` through ``AIRFLOW_CONN_BFX_CATALOG_DEFAULT``.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

REPO = Path(__file__).resolve().parents[2]
E2E_DAGS = Path(__file__).resolve().parent / "dags"
EXAMPLE_DAGS = REPO / "example_dags"

_ROOT = Path(tempfile.mkdtemp(prefix="bfx-e2e-"))
atexit.register(shutil.rmtree, _ROOT, True)
AIRFLOW_HOME = _ROOT / "airflow_home"
DAGS_FOLDER = AIRFLOW_HOME / "dags"
METADATA_DB = AIRFLOW_HOME / "airflow.db"

_AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{METADATA_DB}",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
DAGS_FOLDER.mkdir(parents=True)
os.environ.update(_AIRFLOW_ENV)
if "airflow.settings" in sys.modules:  # imported before this file: re-point its ORM
    from airflow import settings as _settings

    _settings.dispose_orm()
    _settings.configure_vars()
    _settings.configure_orm()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The migrated metadata database and the dags folder, once per session."""
    from airflow.utils import db

    for source in [EXAMPLE_DAGS / "warehouse_batch.py", *sorted(E2E_DAGS.glob("*.py"))]:
        shutil.copy(source, DAGS_FOLDER / source.name)
    db.upgradedb()
    return METADATA_DB


_dates = itertools.count()


def next_logical_date() -> datetime:
    """A logical date no other run of this session used (reusing one deletes that run)."""
    return datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=next(_dates))


@dataclass
class Catalog:
    """The catalog a test's DAG runs write to, and a store to read it back."""

    kind: str
    url: str

    def store(self) -> Any:
        from airflow_provider_bfx.catalog.engine import create_catalog_engine
        from airflow_provider_bfx.catalog.store import CatalogStore

        return CatalogStore(create_catalog_engine(self.url))

    def rows(self, dag_id: str, run_id: str | None = None) -> list[Any]:
        store = self.store()
        try:
            return list(store.executions(dag_id, run_id))
        finally:
            store.engine.dispose()

    def task_rows(self, dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
        """The latest row of each (task_id, map_index) of one run."""
        latest: dict[tuple[str, int], Any] = {}
        for row in self.rows(dag_id, run_id):
            if row.TaskId is not None:
                latest[(row.TaskId, row.MapIndex)] = row
        return latest

    def batch_row(self, dag_id: str, run_id: str) -> Any:
        (row,) = [r for r in self.rows(dag_id, run_id) if r.TaskId is None]
        return row

    def hand_edit(self, execution_id: int, column: str, value: str) -> None:
        """Set one column of one Execution row as a DBA would by hand, bypassing the CHECK
        constraints (SQLite only: it lets a session switch them off)."""
        from sqlalchemy import text

        assert self.kind == "sqlite", "only SQLite lets a session skip CHECK constraints"
        assert column.isidentifier(), column
        store = self.store()
        try:
            with store.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
                conn.execute(
                    text(f"UPDATE Execution SET {column} = :value WHERE ExecutionID = :id"),
                    {"value": value, "id": execution_id},
                )
                conn.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")
        finally:
            store.engine.dispose()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def catalog(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    airflow_db: Path,
) -> Iterator[Catalog]:
    from airflow_provider_bfx.routing.catalog import forget_stores

    for name in list(os.environ):
        if name.startswith("AIRFLOW__BFX__"):
            monkeypatch.delenv(name)
    if request.param == "sqlite":
        path = tmp_path / "bfx_catalog.db"
        monkeypatch.delenv("AIRFLOW_CONN_BFX_CATALOG_DEFAULT", raising=False)
        monkeypatch.setenv("AIRFLOW__BFX__EMBEDDED_CATALOG_PATH", str(path))
        found = Catalog("sqlite", f"sqlite:///{path}")
    else:
        from airflow_provider_bfx.catalog.engine import create_catalog_engine
        from airflow_provider_bfx.catalog.migrate import upgrade

        url = str(request.getfixturevalue("pg_url"))
        engine = create_catalog_engine(url)
        upgrade(engine)  # what `bfx catalog init` does
        engine.dispose()
        parts = make_url(url)
        monkeypatch.setenv(
            "AIRFLOW_CONN_BFX_CATALOG_DEFAULT",
            json.dumps(
                {
                    "conn_type": "postgres",
                    "host": parts.host,
                    "port": parts.port,
                    "login": parts.username,
                    "password": parts.password,
                    "schema": parts.database,
                }
            ),
        )
        found = Catalog("postgresql", url)
    copies = tmp_path / "copies"
    copies.mkdir()
    monkeypatch.setenv("BFX_EXAMPLE_COPY_DIR", str(copies))
    try:
        yield found
    finally:
        forget_stores()


@pytest.fixture
def copies_dir(catalog: Catalog) -> Path:
    return Path(os.environ["BFX_EXAMPLE_COPY_DIR"])


def load_dag(dag_id: str) -> Any:
    """The DAG as Airflow loads it: parsed from the dags folder, cluster policy applied."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


@dataclass
class RunResult:
    dag_id: str
    run_id: str
    state: str
    states: dict[tuple[str, int], str]

    def state_of(self, task_id: str, map_index: int = -1) -> str:
        return self.states[(task_id, map_index)]


def run_dag(
    dag_id: str, conf: dict[str, Any] | None = None, logical_date: datetime | None = None
) -> RunResult:
    """One DAG run with ``dag.test()``, read back from the metadata database.

    ``logical_date`` defaults to a new one. Passing one an earlier run of the session used makes
    ``dag.test()`` DELETE that earlier Airflow run (and its task instances) and create a new run
    with a new run_id: the catalog keeps the earlier batch's rows and sees a new batch of the same
    logical date (docs/notes/airflow-3.3-routing-spike.md, section 6)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag = load_dag(dag_id)
    dag_run = dag.test(logical_date=logical_date or next_logical_date(), run_conf=conf)
    run_id = dag_run.run_id
    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        states = {(ti.task_id, ti.map_index): _value(ti.state) for ti in tis}
        from airflow.models.dagrun import DagRun

        state = _value(
            session.scalar(
                select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
        )
    return RunResult(dag_id, run_id, state, states)


def _value(state: Any) -> str:
    return str(getattr(state, "value", state))


def xcom_value(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
    """The ``return_value`` XCom a task instance left in the metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == "return_value",
            )
        )
    return None if value is None else XComModel.deserialize_value(_Row(value))


@dataclass
class _Row:
    value: Any


def bfx_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the provider logged (the catalog's decisions and the routing's), one line each.

    These are ordinary ``logging`` records of the ``airflow_provider_bfx`` loggers, which reach
    the root logger at INFO: Airflow's task runner routes exactly those into the task log."""
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("airflow_provider_bfx")
    )


def clear_and_resume(dag_id: str, run_id: str, task_ids: list[str]) -> RunResult:
    """Clear task instances of a finished DAG run and run that SAME run again, the way the
    scheduler would after "Clear" in the UI (``dag.test()`` cannot: it always makes a new run).

    The loop is ``dag.test()``'s own, minus creating the run."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    dag = load_dag(dag_id)
    session = settings.Session()
    try:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id.in_(task_ids),
            )
        ).all()
        clear_task_instances(list(tis), session, dag_run_state=DagRunState.RUNNING)
        session.commit()
        dag_run = session.scalar(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
        assert dag_run is not None
        scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        # As dag.test() does: the deserialized DAG keeps only has_on_*_callback; carry the
        # callbacks themselves over so that update_state() runs them in this process.
        scheduler_dag.on_success_callback = dag.on_success_callback  # type: ignore[attr-defined]
        scheduler_dag.on_failure_callback = dag.on_failure_callback  # type: ignore[attr-defined]
        dag_run.dag = scheduler_dag
        while dag_run.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = dag_run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in dag_run.get_task_instances(session=session):
                if ti.state == TaskInstanceState.SCHEDULED:
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id])
    finally:
        session.close()
    from airflow.utils.session import create_session

    with create_session() as fresh:
        tis = fresh.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        states = {(ti.task_id, ti.map_index): _value(ti.state) for ti in tis}
        state = _value(
            fresh.scalar(
                select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
        )
    return RunResult(dag_id, run_id, state, states)
