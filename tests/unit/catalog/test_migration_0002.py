"""Migration 0002 (package identity) over a catalog with history made by release 0.1.0.

``tests/fixtures/release_0_1_0_catalog.json`` holds every row the 0.1.0 store wrote for three
DAGs (see ``make_release_0_1_0_catalog.py`` next to it): DAG ``a`` with tasks ``b.c``, ``b`` and
``load``, DAG ``a.b`` with tasks ``c`` and ``d``, whose packages 0.1.0 shared (``a.b.c`` was one
row for two tasks, ``a.b`` one row for a task and a DAG), and DAG ``plain`` whose first run
failed after its copy step landed. Each test loads those rows into a catalog created at the
frozen revision 0001 on a real engine, upgrades it, and checks the rows and what the current
store decides from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, insert, select, text
from sqlalchemy.exc import IntegrityError

from airflow_provider_bfx.catalog import migrate, operations
from airflow_provider_bfx.catalog.codes import ExecutionStatus
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import Run
from airflow_provider_bfx.catalog.migrate import current_revision, offline_sql, upgrade
from airflow_provider_bfx.catalog.schema import build_schema
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "release_0_1_0_catalog.json"
TABLES = ("Package", "Execution", "ExecutionError", "ExecutionCheckpoint", "ExecutionRowCount")


def load_release_0_1_0(engine: Engine) -> None:
    """Create revision 0001 and insert the fixture's rows with 0001's own table shapes."""
    upgrade(engine, "0001")
    dialect = engine.dialect.name
    schema = None if dialect == "sqlite" else "bfx"
    md = MetaData(schema=schema)
    rows = json.loads(FIXTURE.read_text())

    def name(n: str) -> str:
        return n.lower() if dialect == "postgresql" else n

    with engine.begin() as conn:
        for table_name in TABLES:
            table = Table(name(table_name), md, autoload_with=conn)
            for row in rows[table_name]:
                values = {
                    name(k): (datetime.fromisoformat(v) if k.endswith(("At", "Time")) and v else v)
                    for k, v in row.items()
                }
                conn.execute(insert(table).values(values))
        if dialect == "postgresql":
            # Rows were inserted with their ids: move each identity past them, as 0.1.0 had.
            for table_name, pk in (
                ("Package", "PackageID"),
                ("Execution", "ExecutionID"),
                ("ExecutionError", "ExecutionErrorID"),
                ("ExecutionCheckpoint", "CheckpointID"),
            ):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('bfx.{name(table_name)}',"
                        f" '{name(pk)}'), (SELECT max({name(pk)}) FROM bfx.{name(table_name)}))"
                    )
                )


@pytest.fixture
def engine(catalog_url: str) -> Iterator[Engine]:
    engine = create_catalog_engine(catalog_url)
    try:
        load_release_0_1_0(engine)
        yield engine
    finally:
        engine.dispose()


def packages(store: CatalogStore) -> dict[tuple[str, str | None], Any]:
    P = store.s.Package
    with store.engine.connect() as conn:
        return {(r.DagId, r.TaskId): r for r in conn.execute(select(P))}


def executions(store: CatalogStore) -> dict[int, Any]:
    E = store.s.Execution
    with store.engine.connect() as conn:
        return {r.ExecutionID: r for r in conn.execute(select(E))}


def test_upgrade_gives_every_task_and_dag_its_own_package(engine: Engine) -> None:
    upgrade(engine)
    assert current_revision(engine) == "0003"
    store = CatalogStore(engine)
    pkgs = packages(store)
    assert {k: (p.PackageName, p.IsBatch) for k, p in pkgs.items()} == {
        ("a", None): ("a", 1),
        ("a", "b.c"): ("a/b.c", 0),
        ("a", "b"): ("a/b", 0),
        ("a", "load"): ("a/load", 0),
        ("a.b", None): ("a.b", 1),
        ("a.b", "c"): ("a.b/c", 0),
        ("a.b", "d"): ("a.b/d", 0),
        ("plain", None): ("plain", 1),
        ("plain", "extract"): ("plain/extract", 0),
        ("plain", "load"): ("plain/load", 0),
    }
    # Rows 0.1.0 created keep their PackageID (joins from the user's own tables still hold).
    assert pkgs[("a", "b.c")].PackageID == 2 and pkgs[("a", "b")].PackageID == 3
    for (dag_id, task_id), p in pkgs.items():
        if task_id is not None:
            assert p.ParentPackageID == pkgs[(dag_id, None)].PackageID, (dag_id, task_id)
    # Every execution sits on the package of the DAG and task it ran as.
    by_id = {p.PackageID: key for key, p in pkgs.items()}
    for e in executions(store).values():
        assert by_id[e.PackageID] == (e.DagId, e.TaskId), e.ExecutionID


def test_checkpoints_follow_their_writer_to_its_own_package(engine: Engine) -> None:
    upgrade(engine)
    store = CatalogStore(engine)
    pkgs = packages(store)
    C, E = store.s.ExecutionCheckpoint, store.s.Execution
    with engine.connect() as conn:
        rows = conn.execute(
            select(C.c.ScopeKey, E.c.DagId, E.c.TaskId, E.c.LineageID, E.c.ItemFingerprint)
            .select_from(C.join(E, E.c.ExecutionID == C.c.ExecutionID))
            .order_by(C.c.CheckpointID)
        ).all()
    assert len(rows) == 5
    for scope, dag_id, task_id, lineage, item in rows:
        package_id = pkgs[(dag_id, task_id)].PackageID
        assert scope == f"L{lineage}/P{package_id}/I{item or '-'}", (dag_id, task_id)


def test_the_current_store_resumes_from_the_upgraded_history(engine: Engine) -> None:
    """Run 2 of each DAG after the upgrade: completed tasks skip, the failed one restarts, the
    landed copy is reused, and no DAG decides from another DAG's rows."""
    upgrade(engine)
    store = CatalogStore(engine)
    olds = executions(store)

    def start(dag_id: str, task_id: str) -> Any:
        batch = BatchSpec(dag_id=dag_id, run_id="r2")
        return store.start_task(TaskSpec(batch=batch, task_id=task_id, lease_owner="new:1"))

    extract = start("plain", "extract")
    assert extract.run is Run.SKIP and extract.prior_execution_id == 9
    load = start("plain", "load")
    assert load.status is ExecutionStatus.COMPUTE_ONLY
    assert load.audit_id == olds[10].AuditID
    # DAG a.b's task c completed in its own run 1: it skips, reusing its own row (6), never
    # DAG a's b.c.
    c = start("a.b", "c")
    assert c.run is Run.SKIP and c.prior_execution_id == 6
    assert start("a.b", "d").status is ExecutionStatus.RETRYING
    bc = start("a", "b.c")
    assert bc.run is Run.SKIP and bc.prior_execution_id == 2
    assert start("a", "load").status is ExecutionStatus.RETRYING
    new = executions(store)
    pkgs = packages(store)
    assert new[c.execution_id].PackageID == pkgs[("a.b", "c")].PackageID
    assert new[bc.execution_id].PackageID == pkgs[("a", "b.c")].PackageID


def test_plan_and_reset_after_the_upgrade_touch_only_their_own_dag(engine: Engine) -> None:
    upgrade(engine)
    store = CatalogStore(engine)
    plan = operations.plan(store, "a.b")
    assert sorted(t.task_id for t in plan.tasks) == ["c", "d"]
    before = {e.ExecutionID: e.NextLoadStatus for e in executions(store).values()}
    operations.reset(store, "a.b")
    after = {e.ExecutionID: e.NextLoadStatus for e in executions(store).values()}
    changed = {i for i in before if before[i] != after[i]}
    assert changed and all(executions(store)[i].DagId == "a.b" for i in changed)


def test_upgrade_script_for_a_dba_converts_the_same_way(sqlite_url: str) -> None:
    """The offline script from 0001 (``bfx catalog ddl --from-revision 0001``), run by hand
    over the same history (SQLite's ``executescript``), gives the same packages as the online
    upgrade."""
    engine = create_catalog_engine(sqlite_url)
    try:
        load_release_0_1_0(engine)
        script = offline_sql("sqlite", from_revision="0001")
        raw = engine.raw_connection()
        try:
            raw.driver_connection.executescript(script)  # type: ignore[union-attr]
        finally:
            raw.close()
        assert current_revision(engine) == "0003"
        store = CatalogStore(engine)
        assert {k: p.PackageName for k, p in packages(store).items()}[("a.b", "c")] == "a.b/c"
        by_id = {p.PackageID: key for key, p in packages(store).items()}
        for e in executions(store).values():
            assert by_id[e.PackageID] == (e.DagId, e.TaskId)
    finally:
        engine.dispose()


def test_downgrade_refuses_when_old_names_would_collide(engine: Engine) -> None:
    """Back to 0001 would give ``a.b.c`` to two packages again: the database refuses, and the
    catalog stays at its head revision with every row as it was."""
    upgrade(engine)
    store = CatalogStore(engine)
    before = {k: p.PackageName for k, p in packages(store).items()}
    config = Config()
    config.set_main_option("script_location", migrate.SCRIPT_LOCATION)
    with pytest.raises(IntegrityError, match="(?i)unique"), engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert current_revision(engine) == "0003"
    assert {k: p.PackageName for k, p in packages(store).items()} == before


def test_migrations_build_exactly_the_schema_the_store_queries(pg_url: str) -> None:
    """Alembic's autogenerate, comparing a catalog built by the migrations (0001 to 0003) with
    ``build_schema``: no column, type, nullability or index differs (PostgreSQL reflects all of
    them)."""
    engine = create_catalog_engine(pg_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": True,
                    "compare_type": True,
                    "include_name": lambda name, kind, _parent: kind != "schema" or name == "bfx",
                },
            )
            diff = compare_metadata(context, build_schema("postgresql").metadata)
    finally:
        engine.dispose()
    # The version table is Alembic's, not the store's.
    assert [d for d in diff if d[1].name != migrate.VERSION_TABLE] == []
    assert diff  # the comparison saw the catalog (its version table is the one extra)
