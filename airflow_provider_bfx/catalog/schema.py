"""The catalog tables, written once as SQLAlchemy Core metadata for three engines (DESIGN.md §3).

The user-facing contract is that a query written with unquoted PascalCase names, such as
``SELECT ExecutionID, NextLoadStatus FROM bfx.Execution``, works on every engine. SQL Server and
SQLite compare identifiers case-insensitively, so they get the PascalCase names as written.
PostgreSQL folds unquoted identifiers to lower case, so there every table and column is *created*
lower case; the query above then resolves. Python code never sees the difference: each column's
``key`` is its PascalCase name, so the store always writes ``table.c.ExecutionID``.

Flags are ``SMALLINT`` 0/1 rather than ``BOOLEAN`` so that ``WHERE IsBatch = 1`` (the form used
in BimlCatalog and in DESIGN.md) works on PostgreSQL too, where ``boolean = integer`` is an error.

Every decision query of :mod:`airflow_provider_bfx.catalog.store` is served by one of the indexes
below, so its cost does not grow with the number of executions kept as history.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Unicode,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mssql

# DATETIME2 on SQL Server: DATETIME rounds to 1/300 s, which reorders fast transitions.
UtcDateTime = DateTime().with_variant(mssql.DATETIME2(), "mssql")

# Server-side defaults in UTC (the store always writes times itself; these serve hand inserts).
_UTC_NOW = {
    "postgresql": "(now() AT TIME ZONE 'utc')",
    "mssql": "SYSUTCDATETIME()",
    "sqlite": "CURRENT_TIMESTAMP",
}

SCHEMA_NAME = "bfx"
SUPPORTED_DIALECTS = ("postgresql", "mssql", "sqlite")

# Lengths chosen so that every unique key fits SQL Server's 1,700-byte nonclustered index limit
# (NVARCHAR stores two bytes a character) while holding Airflow's own limits (dag_id, task_id and
# run_id are at most 250 characters each; see keys.AIRFLOW_ID_LIMIT).
AIRFLOW_ID_LEN = 250
PACKAGE_NAME_LEN = 2 * AIRFLOW_ID_LEN + 1  # dag_id "/" task_id
_OBJECT_NAME_LEN = 500
_EXTERNAL_ID_LEN = 800  # dag_id/run_id/task_id/map_index/try_number (at most ~775)
_FINGERPRINT_LEN = 64  # sha256 hex
_SCOPE_KEY_LEN = 200
_NODE_KEY_LEN = 200
_ITERATION_KEY_LEN = 40


@dataclass(frozen=True)
class CatalogSchema:
    """The catalog's tables for one engine, addressed by their contract names."""

    metadata: MetaData
    dialect: str
    schema: str | None
    Package: Table
    Execution: Table
    ExecutionError: Table
    ExecutionCheckpoint: Table
    ExecutionRowCount: Table

    def qualified(self, table: Table) -> str:
        """The name a person would type for ``table`` on this engine (``bfx.Execution``)."""
        contract_name = next(
            name
            for name in (
                "Package",
                "Execution",
                "ExecutionError",
                "ExecutionCheckpoint",
                "ExecutionRowCount",
            )
            if getattr(self, name) is table
        )
        return f"{self.schema}.{contract_name}" if self.schema else contract_name


def build_schema(dialect: str) -> CatalogSchema:
    """Build the catalog metadata for ``dialect`` (``postgresql``, ``mssql`` or ``sqlite``)."""
    if dialect not in SUPPORTED_DIALECTS:
        raise ValueError(
            f"unsupported catalog dialect {dialect!r}: use one of {', '.join(SUPPORTED_DIALECTS)}"
        )
    fold = dialect == "postgresql"
    schema = None if dialect == "sqlite" else SCHEMA_NAME
    md = MetaData(schema=schema)

    def n(name: str) -> str:
        return name.lower() if fold else name

    def col(name: str, *args: object, **kw: object) -> Column:  # type: ignore[type-arg]
        return Column(n(name), *args, key=name, **kw)  # type: ignore[arg-type]

    def fk(table: str, column: str) -> ForeignKey:
        prefix = f"{schema}." if schema else ""
        return ForeignKey(f"{prefix}{n(table)}.{column}")

    def flag(name: str, default: int) -> tuple[Column, CheckConstraint]:  # type: ignore[type-arg]
        return (
            col(name, SmallInteger, nullable=False, server_default=text(str(default))),
            CheckConstraint(f"{n(name)} IN (0, 1)", name=f"ck_package_{name.lower()}"),
        )

    def pk(name: str) -> Column:  # type: ignore[type-arg]
        # SQLite only auto-assigns an INTEGER PRIMARY KEY (a rowid alias), not a BIGINT one.
        return col(
            name,
            BigInteger().with_variant(Integer(), "sqlite"),
            Identity(start=1, increment=1),
            primary_key=True,
        )

    now = text(_UTC_NOW[dialect])
    is_batch, ck_batch = flag("IsBatch", 0)
    is_enabled, ck_enabled = flag("IsEnabled", 1)

    package = Table(
        n("Package"),
        md,
        pk("PackageID"),
        col("PackageName", Unicode(PACKAGE_NAME_LEN), nullable=False),
        col("ParentPackageID", BigInteger, fk("Package", "PackageID"), nullable=True),
        is_batch,
        is_enabled,
        col("RetryLimit", Integer, nullable=False, server_default=text("3")),
        col("MaxResumeAge", Integer, nullable=True),
        col("CreatedAt", UtcDateTime, nullable=False, server_default=now),
        col("UpdatedAt", UtcDateTime, nullable=False, server_default=now),
        # The identity (DESIGN.md §3); PackageName is derived from it, never split back into it.
        # Last, where migration 0002 added them, so that the columns read as the database has them.
        col("DagId", Unicode(AIRFLOW_ID_LEN), nullable=False),
        col("TaskId", Unicode(AIRFLOW_ID_LEN), nullable=True),  # NULL: the DAG's batch package
        ck_batch,
        ck_enabled,
        UniqueConstraint("PackageName", name="uq_package_packagename"),
        Index("ix_package_parent", "ParentPackageID"),
        # Every package lookup is keyed on the identity (migration 0002).
        Index("uq_package_dagid_taskid", "DagId", "TaskId", unique=True),
    )

    active_task = f"{n('TaskId')} IS NOT NULL AND {n('ExecutionStatus')} IN ('E', 'R', 'D')"
    execution = Table(
        n("Execution"),
        md,
        pk("ExecutionID"),
        col("ParentExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=True),
        col("OriginalExecutionID", BigInteger, nullable=True),
        col("ExternalExecutionID", Unicode(_EXTERNAL_ID_LEN), nullable=False),
        col("PackageID", BigInteger, fk("Package", "PackageID"), nullable=False),
        col("ExecutionStatus", String(1), nullable=False),
        col("NextLoadStatus", String(1), nullable=False),
        col("AttemptNumber", Integer, nullable=False, server_default=text("1")),
        col("AuditID", BigInteger, nullable=True),
        col("OperatorFingerprint", String(_FINGERPRINT_LEN), nullable=True),
        col("ItemFingerprint", String(_FINGERPRINT_LEN), nullable=False, server_default=text("''")),
        col("LeaseOwner", Unicode(255), nullable=True),
        col("LeaseExpiresAt", UtcDateTime, nullable=True),
        col("StartTime", UtcDateTime, nullable=False, server_default=now),
        col("EndTime", UtcDateTime, nullable=True),
        col("DagId", Unicode(AIRFLOW_ID_LEN), nullable=False),
        col("RunId", Unicode(AIRFLOW_ID_LEN), nullable=False),
        col("TaskId", Unicode(AIRFLOW_ID_LEN), nullable=True),
        col("MapIndex", Integer, nullable=True),
        col("TryNumber", Integer, nullable=True),
        # Not named in DESIGN.md §3; added because the decision queries need them (see
        # docs/decisions/0002-lineage-columns.md).
        col("LineageID", BigInteger, nullable=True),
        col("LogicalDate", UtcDateTime, nullable=True),
        col("UpdatedAt", UtcDateTime, nullable=False, server_default=now),
        UniqueConstraint("ExternalExecutionID", name="uq_execution_externalexecutionid"),
        CheckConstraint(
            f"{n('ExecutionStatus')} IN ('E', 'R', 'D', 'S', 'F', 'C', 'A')",
            name="ck_execution_executionstatus",
        ),
        CheckConstraint(
            f"{n('NextLoadStatus')} IN ('P', 'C', 'R', 'D')", name="ck_execution_nextloadstatus"
        ),
        # Batch start: the latest batch execution of a package.
        Index("ix_execution_package_id", "PackageID", "ExecutionID"),
        # Task start: another active execution of the same package (few rows are active).
        Index("ix_execution_package_status", "PackageID", "ExecutionStatus"),
        # The per-package guard, enforced by the database: at most one active execution of a
        # task package and item. Two starts racing past each other's reads (PostgreSQL reads
        # a statement's joined facts as of before its lock wait) cannot both insert an active
        # row; the loser's transition is re-run and sees the winner (docs/decisions/0007).
        Index(
            "uq_execution_one_active",
            "PackageID",
            "ItemFingerprint",
            unique=True,
            postgresql_where=text(active_task),
            sqlite_where=text(active_task),
            mssql_where=text(active_task),
        ),
        # Task start: the latest terminal execution of a package (and item) in a lineage.
        Index(
            "ix_execution_lineage_package",
            "LineageID",
            "PackageID",
            "ItemFingerprint",
            "ExecutionID",
        ),
        # Batch end and final failure: the children of one batch execution.
        Index("ix_execution_parent_status", "ParentExecutionID", "ExecutionStatus"),
        # Expiry scan: active rows whose lease has lapsed.
        Index("ix_execution_status_lease", "ExecutionStatus", "LeaseExpiresAt"),
        # Joins from Airflow's own tables.
        Index("ix_execution_dag_run", "DagId", "RunId"),
        # The gate's upstream check (the latest row of each upstream task and map index of one
        # DAG run) and a task package's first registration, whatever the run's size or the
        # history (migration 0003, decision 0100).
        Index("ix_execution_dag_task_run", "DagId", "TaskId", "RunId", "MapIndex", "ExecutionID"),
    )

    execution_error = Table(
        n("ExecutionError"),
        md,
        pk("ExecutionErrorID"),
        col("ExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=False),
        col("ErrorType", Unicode(255), nullable=True),
        col("ErrorMessage", Unicode(), nullable=True),
        col("ErrorDetail", Unicode(), nullable=True),
        col("CreatedAt", UtcDateTime, nullable=False, server_default=now),
        Index("ix_executionerror_execution", "ExecutionID"),
    )

    execution_checkpoint = Table(
        n("ExecutionCheckpoint"),
        md,
        pk("CheckpointID"),
        col("ScopeKey", Unicode(_SCOPE_KEY_LEN), nullable=False),
        col("ExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=False),
        col("CheckpointType", String(20), nullable=False),
        col("NodeKey", Unicode(_NODE_KEY_LEN), nullable=False),
        col("IterationKey", String(_ITERATION_KEY_LEN), nullable=False, server_default=text("''")),
        col("ItemFingerprint", String(_FINGERPRINT_LEN), nullable=True),
        col("OperatorFingerprint", String(_FINGERPRINT_LEN), nullable=True),
        col("Payload", Unicode(), nullable=True),
        col("CreatedAt", UtcDateTime, nullable=False, server_default=now),
        UniqueConstraint(
            "ScopeKey",
            "CheckpointType",
            "NodeKey",
            "IterationKey",
            name="uq_executioncheckpoint_scope",
        ),
        CheckConstraint(
            f"{n('CheckpointType')} IN ('NODE_OUTPUT', 'FOREACH_PROGRESS')",
            name="ck_executioncheckpoint_type",
        ),
        Index("ix_executioncheckpoint_execution", "ExecutionID"),
    )

    execution_row_count = Table(
        n("ExecutionRowCount"),
        md,
        pk("RowCountID"),
        col("ExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=False),
        col("ObjectName", Unicode(_OBJECT_NAME_LEN), nullable=False),
        col("CountType", String(50), nullable=False),
        col("RecordCount", BigInteger, nullable=False),
        col("CreatedAt", UtcDateTime, nullable=False, server_default=now),
        Index("ix_executionrowcount_execution", "ExecutionID"),
    )

    return CatalogSchema(
        metadata=md,
        dialect=dialect,
        schema=schema,
        Package=package,
        Execution=execution,
        ExecutionError=execution_error,
        ExecutionCheckpoint=execution_checkpoint,
        ExecutionRowCount=execution_row_count,
    )
