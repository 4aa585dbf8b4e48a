"""The catalog's Alembic migrations, its schema check, and the SQL script a DBA deploys by hand.

Everything runs against real databases (a fresh SQLite file, a fresh PostgreSQL database) and
real Alembic. An "older" catalog is made honestly: a copy of the shipped migrations with one
more revision (0004) on top, so that the shipped head (0003) *is* the older revision.
"""

from __future__ import annotations

import multiprocessing
import queue
import re
import shutil
import sqlite3
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, UniqueConstraint, create_engine, event, inspect, make_url, text
from sqlalchemy.pool import NullPool

from airflow_provider_bfx.catalog import migrate
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import (
    CatalogSchemaError,
    check_schema,
    current_revision,
    head_revision,
    offline_sql,
    upgrade,
)
from airflow_provider_bfx.catalog.schema import build_schema

# The user-facing contract of DESIGN.md §3, written out here rather than read from schema.py.
CONTRACT_COLUMNS: dict[str, list[str]] = {
    "Package": [
        "PackageID",
        "PackageName",
        "DagId",
        "TaskId",
        "ParentPackageID",
        "IsBatch",
        "IsEnabled",
        "RetryLimit",
        "MaxResumeAge",
        "CreatedAt",
        "UpdatedAt",
    ],
    "Execution": [
        "ExecutionID",
        "ParentExecutionID",
        "OriginalExecutionID",
        "ExternalExecutionID",
        "PackageID",
        "ExecutionStatus",
        "NextLoadStatus",
        "AttemptNumber",
        "AuditID",
        "OperatorFingerprint",
        "ItemFingerprint",
        "LeaseOwner",
        "LeaseExpiresAt",
        "StartTime",
        "EndTime",
        "DagId",
        "RunId",
        "TaskId",
        "MapIndex",
        "TryNumber",
    ],
    "ExecutionError": [
        "ExecutionErrorID",
        "ExecutionID",
        "ErrorType",
        "ErrorMessage",
        "ErrorDetail",
        "CreatedAt",
    ],
    "ExecutionCheckpoint": [
        "CheckpointID",
        "ScopeKey",
        "ExecutionID",
        "CheckpointType",
        "NodeKey",
        "IterationKey",
        "ItemFingerprint",
        "OperatorFingerprint",
        "Payload",
        "CreatedAt",
    ],
    "ExecutionRowCount": [
        "RowCountID",
        "ExecutionID",
        "ObjectName",
        "CountType",
        "RecordCount",
        "CreatedAt",
    ],
}

WORKERS = 3

REVISION_0004 = '''"""Test-only revision on top of the shipped ones: adds Package.Note."""

from alembic import op
from sqlalchemy import Column, Unicode

from airflow_provider_bfx.catalog.schema import build_schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _note() -> str:
    # Lower case on PostgreSQL, like every catalog name, so that unquoted `Note` resolves.
    return "note" if op.get_context().dialect.name == "postgresql" else "Note"


def upgrade() -> None:
    package = build_schema(op.get_context().dialect.name).Package
    op.add_column(package.name, Column(_note(), Unicode(50)), schema=package.schema)


def downgrade() -> None:
    package = build_schema(op.get_context().dialect.name).Package
    op.drop_column(package.name, _note(), schema=package.schema)
'''


def prefix(dialect: str) -> str:
    """How a person qualifies a catalog table on this engine: ``bfx.`` or nothing (SQLite)."""
    return "" if dialect == "sqlite" else "bfx."


@contextmanager
def catalog_engine(url: str) -> Iterator[Engine]:
    engine = create_catalog_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(catalog_url: str) -> Iterator[Engine]:
    with catalog_engine(catalog_url) as engine:
        yield engine


@pytest.fixture
def migrations_with_0004(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped migrations plus a revision 0004: the shipped head 0003 becomes 'older'."""
    return install_migrations_with_0004(tmp_path, monkeypatch)


def install_migrations_with_0004(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    location = tmp_path / "migrations"
    shutil.copytree(migrate.SCRIPT_LOCATION, location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "0004_add_package_note.py").write_text(REVISION_0004)
    monkeypatch.setattr(migrate, "SCRIPT_LOCATION", str(location))
    return location


def statements_during(engine: Engine) -> list[str]:
    """A list that collects every SQL statement ``engine`` sends from now on."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    return seen


def exercise_catalog(engine: Engine) -> None:
    """Insert one row into every table with unquoted PascalCase SQL, as a person would, and read
    every contract column back with unquoted queries (DESIGN.md §3)."""
    p = prefix(engine.dialect.name)
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {p}Package (PackageName, DagId, IsBatch) VALUES ('dag', 'dag', 1)")
        )
        conn.execute(
            text(
                f"INSERT INTO {p}Package (PackageName, DagId, TaskId)"
                " VALUES ('dag/task', 'dag', 'task')"
            )
        )
        package_id = conn.execute(
            text(f"SELECT PackageID FROM {p}Package WHERE PackageName = 'dag'")
        ).scalar_one()
        conn.execute(
            text(
                f"INSERT INTO {p}Execution (ExternalExecutionID, PackageID, ExecutionStatus, "
                f"NextLoadStatus, DagId, RunId) VALUES ('dag/run1', :pid, 'S', 'P', 'dag', 'run1')"
            ),
            {"pid": package_id},
        )
        execution_id = conn.execute(text(f"SELECT ExecutionID FROM {p}Execution")).scalar_one()
        params = {"eid": execution_id}
        conn.execute(
            text(
                f"INSERT INTO {p}ExecutionError (ExecutionID, ErrorType, ErrorMessage) "
                "VALUES (:eid, 'ValueError', 'boom')"
            ),
            params,
        )
        conn.execute(
            text(
                f"INSERT INTO {p}ExecutionCheckpoint (ScopeKey, ExecutionID, CheckpointType, "
                "NodeKey, Payload) VALUES ('scope', :eid, 'NODE_OUTPUT', 'copy', '{}')"
            ),
            params,
        )
        conn.execute(
            text(
                f"INSERT INTO {p}ExecutionRowCount (ExecutionID, ObjectName, CountType, "
                "RecordCount) VALUES (:eid, 'dbo.customer', 'INSERT', 42)"
            ),
            params,
        )

    with engine.connect() as conn:
        execution = conn.execute(
            text(
                "SELECT ExecutionID, OriginalExecutionID, ExecutionStatus, NextLoadStatus "
                f"FROM {p}Execution"
            )
        ).one()
        assert tuple(execution) == (execution_id, None, "S", "P")
        batch = conn.execute(
            text(f"SELECT PackageID, PackageName, IsBatch FROM {p}Package WHERE IsBatch = 1")
        ).one()
        assert tuple(batch) == (package_id, "dag", 1)
        # Server defaults: IsEnabled 1, RetryLimit 3, CreatedAt filled in.
        assert conn.execute(
            text(f"SELECT IsEnabled, RetryLimit FROM {p}Package WHERE PackageName = 'dag/task'")
        ).one() == (1, 3)
        for table, columns in CONTRACT_COLUMNS.items():
            row = conn.execute(text(f"SELECT {', '.join(columns)} FROM {p}{table}")).first()
            assert row is not None, table
            assert len(row) == len(columns)
        assert (
            conn.execute(
                text(f"SELECT RecordCount FROM {p}ExecutionRowCount WHERE ExecutionID = :eid"),
                params,
            ).scalar_one()
            == 42
        )


# -- online upgrade ---------------------------------------------------------------------------


def test_upgrade_on_empty_database_creates_every_table_index_and_the_revision(
    engine: Engine,
) -> None:
    upgrade(engine)

    catalog = build_schema(engine.dialect.name)
    inspector = inspect(engine)
    for table in catalog.metadata.sorted_tables:
        assert inspector.has_table(table.name, schema=table.schema), table.name
        assert {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)} == {
            c.name for c in table.columns
        }
        assert {ix["name"] for ix in inspector.get_indexes(table.name, schema=table.schema)} >= {
            ix.name for ix in table.indexes
        }
        assert {
            uq["name"] for uq in inspector.get_unique_constraints(table.name, schema=table.schema)
        } == {c.name for c in table.constraints if isinstance(c, UniqueConstraint)}
    assert inspector.has_table(migrate.VERSION_TABLE, schema=catalog.schema)
    assert current_revision(engine) == head_revision() == "0003"
    check_schema(engine)


def test_contract_queries_work_unquoted_after_upgrade(engine: Engine) -> None:
    upgrade(engine)
    exercise_catalog(engine)


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    upgrade(engine)
    p = prefix(engine.dialect.name)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {p}Package (PackageName, DagId) VALUES ('kept', 'kept')"))

    seen = statements_during(engine)
    upgrade(engine)

    changes = [s for s in seen if re.match(r"\s*(CREATE|DROP|ALTER|INSERT|UPDATE|DELETE)", s, re.I)]
    assert changes == []
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT PackageName FROM {p}Package")).scalars().all() == ["kept"]
        versions = conn.execute(text(f"SELECT version_num FROM {p}bfx_alembic_version")).all()
    assert versions == [("0003",)]


def _upgrade_worker(url: str, barrier: Any, errors: Any) -> None:
    """One process (or thread) of the concurrency tests: meet the others, then upgrade."""
    engine = create_catalog_engine(url)
    try:
        with engine.connect():  # connected before the barrier, so that they really collide
            pass
        barrier.wait(timeout=30)
        upgrade(engine)
    except BaseException:  # sent to the test, which fails with it
        errors.put(traceback.format_exc())
    finally:
        engine.dispose()


def assert_upgraded_once(url: str) -> None:
    with catalog_engine(url) as engine:
        check_schema(engine)
        p = prefix(engine.dialect.name)
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {p}bfx_alembic_version")).scalar() == 1


@pytest.mark.slow
def test_concurrent_upgrades_from_several_processes_all_succeed(catalog_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    errors = ctx.Queue()
    workers = [
        ctx.Process(target=_upgrade_worker, args=(catalog_url, barrier, errors))
        for _ in range(WORKERS)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=90)

    assert [w.exitcode for w in workers] == [0] * WORKERS
    assert drain(errors) == []
    assert_upgraded_once(catalog_url)


def test_concurrent_upgrades_from_several_threads_all_succeed(catalog_url: str) -> None:
    barrier = threading.Barrier(WORKERS)
    errors: queue.Queue[str] = queue.Queue()
    threads = [
        threading.Thread(target=_upgrade_worker, args=(catalog_url, barrier, errors))
        for _ in range(WORKERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert drain(errors) == []
    assert_upgraded_once(catalog_url)


def drain(errors: Any) -> list[str]:
    found = []
    while True:
        try:
            found.append(errors.get(timeout=0.5))
        except queue.Empty:
            return found


def test_downgrade_to_base_drops_the_tables_and_upgrade_recreates_them(engine: Engine) -> None:
    upgrade(engine)
    config = Config()
    config.set_main_option("script_location", migrate.SCRIPT_LOCATION)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")

    catalog = build_schema(engine.dialect.name)
    inspector = inspect(engine)
    assert [
        t.name for t in catalog.metadata.sorted_tables if inspector.has_table(t.name, t.schema)
    ] == []
    with pytest.raises(CatalogSchemaError, match="bfx catalog init"):
        check_schema(engine)

    upgrade(engine)
    check_schema(engine)


# -- check_schema -----------------------------------------------------------------------------


def test_check_schema_on_empty_database_names_init_and_hides_the_password(
    engine: Engine, catalog_url: str
) -> None:
    with pytest.raises(CatalogSchemaError) as caught:
        check_schema(engine)

    message = str(caught.value)
    dialect = engine.dialect.name
    assert "bfx catalog init" in message
    assert f"bfx catalog ddl --dialect {dialect}" in message
    assert make_url(catalog_url).render_as_string(hide_password=True) in message
    password = make_url(catalog_url).password
    if password:
        assert f":{password}@" not in message
    assert ("no bfx schema" if dialect != "sqlite" else "no bfx catalog tables") in message


def test_check_schema_on_a_current_catalog_is_one_query(engine: Engine) -> None:
    upgrade(engine)
    seen = statements_during(engine)

    check_schema(engine)

    # On PostgreSQL the BEGIN travels in front of the first statement (decision 0101).
    sent = [re.sub(r"^\s*BEGIN;\s*", "", s) for s in seen]
    queries = [
        s for s in sent if s.strip() and not s.strip().upper().startswith(("BEGIN", "PRAGMA"))
    ]
    assert len(queries) == 1, queries
    assert "bfx_alembic_version" in queries[0]


def test_check_schema_on_older_revision_names_upgrade_and_upgrade_brings_it_up(
    engine: Engine, migrations_with_0004: Path
) -> None:
    upgrade(engine, "0003")
    assert head_revision() == "0004"

    with pytest.raises(CatalogSchemaError) as caught:
        check_schema(engine)
    message = str(caught.value)
    assert "revision 0003" in message
    assert "needs revision 0004" in message
    assert "bfx catalog upgrade" in message

    upgrade(engine)

    check_schema(engine)
    assert current_revision(engine) == "0004"
    p = prefix(engine.dialect.name)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT PackageID, Note FROM {p}Package")).all() == []


def test_check_schema_on_a_newer_revision_says_to_upgrade_the_package(engine: Engine) -> None:
    upgrade(engine)
    p = prefix(engine.dialect.name)
    with engine.begin() as conn:  # what a newer airflow-provider-bfx would have left behind
        conn.execute(text(f"UPDATE {p}bfx_alembic_version SET version_num = '0099_future'"))

    with pytest.raises(CatalogSchemaError) as caught:
        check_schema(engine)
    message = str(caught.value)
    assert "0099_future" in message
    assert "Upgrade airflow-provider-bfx" in message
    assert "bfx catalog upgrade" not in message

    with pytest.raises(CatalogSchemaError, match="Upgrade airflow-provider-bfx"):
        upgrade(engine)  # refuses, and leaves the row alone
    assert current_revision(engine) == "0099_future"


def test_tables_without_a_version_record_are_named_not_overwritten(engine: Engine) -> None:
    catalog = build_schema(engine.dialect.name)
    if catalog.schema:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {catalog.schema}"))
    catalog.metadata.create_all(engine)  # tables made by hand, not by the migrations

    with pytest.raises(CatalogSchemaError, match="bfx tables but no revision"):
        check_schema(engine)
    with pytest.raises(CatalogSchemaError, match="bfx tables but no revision"):
        upgrade(engine)


def test_unsupported_engine_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unsupported catalog dialect 'oracle'"):
        offline_sql("oracle")


# -- the DBA's script -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "mssql", "sqlite"])
def test_offline_script_starts_with_a_header_naming_product_revision_and_dialect(
    dialect: str,
) -> None:
    script = offline_sql(dialect)

    first = script.splitlines()[0]
    assert first == f"-- airflow-provider-bfx catalog schema, revision 0003, dialect {dialect}"
    assert f"`bfx catalog ddl --dialect {dialect}`" in script.split("\n\n")[0]
    assert "version_num='0003'" in script  # the version row check_schema looks for


def test_offline_postgresql_script_run_by_hand_gives_a_working_catalog(pg_url: str) -> None:
    script = offline_sql("postgresql")
    # Sent as one string over a bare psycopg2 connection in autocommit, as psql -f would: the
    # script brings its own BEGIN and COMMIT.
    plain = create_engine(pg_url, poolclass=NullPool)
    raw = plain.raw_connection()
    try:
        dbapi = raw.driver_connection
        assert dbapi is not None
        dbapi.autocommit = True
        with dbapi.cursor() as cursor:
            cursor.execute(script)
    finally:
        raw.close()
        plain.dispose()

    with catalog_engine(pg_url) as engine:
        check_schema(engine)
        assert current_revision(engine) == "0003"
        exercise_catalog(engine)


def test_offline_sqlite_script_run_by_hand_matches_the_online_upgrade(tmp_path: Path) -> None:
    by_hand = tmp_path / "by_hand.db"
    with sqlite3.connect(by_hand) as dbapi:
        dbapi.executescript(offline_sql("sqlite"))
    dbapi.close()
    online = tmp_path / "online.db"
    with catalog_engine(f"sqlite:///{online}") as engine:
        upgrade(engine)

    def objects(path: Path) -> set[tuple[str, str, str]]:
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        conn.close()
        return {(kind, name, " ".join((sql or "").split())) for kind, name, sql in rows}

    assert objects(by_hand) == objects(online)
    with catalog_engine(f"sqlite:///{by_hand}") as engine:
        check_schema(engine)
        exercise_catalog(engine)


def test_offline_upgrade_script_from_an_older_revision(
    tmp_path: Path, migrations_with_0004: Path
) -> None:
    db = tmp_path / "catalog.db"
    with catalog_engine(f"sqlite:///{db}") as engine:
        upgrade(engine, "0003")

    script = offline_sql("sqlite", from_revision="0003")

    assert "CREATE TABLE" not in script  # only the step from 0003 to 0004
    assert "ALTER TABLE" in script
    assert "UPDATE bfx_alembic_version SET version_num='0004'" in script
    with sqlite3.connect(db) as dbapi:
        dbapi.executescript(script)
    dbapi.close()
    with catalog_engine(f"sqlite:///{db}") as engine:
        check_schema(engine)
        assert current_revision(engine) == "0004"


def test_offline_mssql_script_is_tsql_with_go_batches() -> None:
    script = offline_sql("mssql")

    lines = script.splitlines()
    assert "GO" in lines
    batches = [
        "\n".join(line for line in batch.strip().splitlines() if not line.startswith("--")).strip()
        for batch in re.split(r"^GO$", script, flags=re.M)
    ]
    # CREATE SCHEMA must be alone in its batch: through EXEC it is, inside the transaction, and
    # only when a DBA has not created the schema already.
    assert batches[1] == (
        "BEGIN TRANSACTION;\n\nIF SCHEMA_ID(N'bfx') IS NULL EXEC(N'CREATE SCHEMA bfx');"
    )
    assert script.count("CREATE SCHEMA") == 1
    body = "\n".join(batches)
    for expected in ("IDENTITY(1,1)", "DATETIME2", "NVARCHAR(500)", "NVARCHAR(max)"):
        assert expected in body
    catalog = build_schema("mssql")
    for table in catalog.metadata.sorted_tables:
        assert f"CREATE TABLE bfx.[{table.name}] (" in body
        for index in table.indexes:
            unique = "UNIQUE " if index.unique else ""
            assert f"CREATE {unique}INDEX {index.name} ON bfx.[{table.name}] (" in body
    assert "CREATE TABLE bfx.bfx_alembic_version (" in body
    assert "INSERT INTO bfx.bfx_alembic_version (version_num)" in body
    assert "BEGIN TRANSACTION;" in body
    assert re.search(r"^COMMIT;$", body, flags=re.M)
    for postgres_or_sqlite_only in (
        "GENERATED BY DEFAULT",
        "TIMESTAMP WITHOUT TIME ZONE",
        "IF NOT EXISTS",
        "now()",
        "RETURNING",
        "BOOLEAN",
        "AUTOINCREMENT",
        '"',
    ):
        assert postgres_or_sqlite_only not in body, postgres_or_sqlite_only


def test_the_head_revision_constant_is_alembics_head() -> None:
    """``revision.HEAD_REVISION`` lets a task check the schema without importing Alembic; a new
    migration must move it too."""
    from airflow_provider_bfx.catalog.migrate import head_revision
    from airflow_provider_bfx.catalog.revision import HEAD_REVISION

    assert head_revision() == HEAD_REVISION


def test_a_current_catalog_is_checked_without_importing_alembic(sqlite_url: str) -> None:
    """The schema check every task process makes before its first statement: one query, no
    Alembic import (it costs a task process 0.1-0.4 s) when the catalog is current."""
    import subprocess
    import sys

    from tests.story import deployed_store

    deployed_store(sqlite_url).engine.dispose()
    probe = (
        "import sys\n"
        "from airflow_provider_bfx.catalog.engine import create_catalog_engine\n"
        "from airflow_provider_bfx.catalog.store import CatalogStore\n"
        f"store = CatalogStore(create_catalog_engine({sqlite_url!r}))\n"
        "store.executions('wh')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
