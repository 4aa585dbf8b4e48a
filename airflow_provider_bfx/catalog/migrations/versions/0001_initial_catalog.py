"""Initial catalog: the five tables of DESIGN.md §3 with their constraints and indexes.

Revision ID: 0001
Revises:
Create Date: 2025-11-22

Released with 0.1.0 and therefore frozen: the tables are written out below exactly as that
release created them, and never read from ``schema.py`` (which describes the newest revision).
Every later change is a new revision (docs/decisions/0093-package-identity-and-migration-0002.md).

The statements are SQLAlchemy DDL constructs passed to ``op.execute`` rather than
``op.create_table`` calls on live metadata, so that the same code runs against a database and
renders in offline mode (``bfx catalog ddl``) for all three engines.

The schema ``bfx`` itself is created by ``env.py``, not here: Alembic writes its version table
(``bfx.bfx_alembic_version``) before the first revision runs, so the schema must exist first.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
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
from sqlalchemy.schema import CreateIndex, CreateTable, DropTable

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UtcDateTime = DateTime().with_variant(mssql.DATETIME2(), "mssql")

_UTC_NOW = {
    "postgresql": "(now() AT TIME ZONE 'utc')",
    "mssql": "SYSUTCDATETIME()",
    "sqlite": "CURRENT_TIMESTAMP",
}


def upgrade() -> None:
    md = _tables(op.get_context().dialect.name)
    # sorted_tables puts every table after the tables its foreign keys reference.
    for table in md.sorted_tables:
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            op.execute(CreateIndex(index))


def downgrade() -> None:
    md = _tables(op.get_context().dialect.name)
    # Dropping a table drops its indexes; children first so that no foreign key is left dangling.
    for table in reversed(md.sorted_tables):
        op.execute(DropTable(table))


def _tables(dialect: str) -> MetaData:
    """The five tables exactly as release 0.1.0 created them (frozen)."""
    fold = dialect == "postgresql"
    schema = None if dialect == "sqlite" else "bfx"
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

    Table(
        n("Package"),
        md,
        pk("PackageID"),
        col("PackageName", Unicode(500), nullable=False),
        col("ParentPackageID", BigInteger, fk("Package", "PackageID"), nullable=True),
        is_batch,
        is_enabled,
        col("RetryLimit", Integer, nullable=False, server_default=text("3")),
        col("MaxResumeAge", Integer, nullable=True),
        col("CreatedAt", UtcDateTime, nullable=False, server_default=now),
        col("UpdatedAt", UtcDateTime, nullable=False, server_default=now),
        ck_batch,
        ck_enabled,
        UniqueConstraint("PackageName", name="uq_package_packagename"),
        Index("ix_package_parent", "ParentPackageID"),
    )

    active_task = f"{n('TaskId')} IS NOT NULL AND {n('ExecutionStatus')} IN ('E', 'R', 'D')"
    Table(
        n("Execution"),
        md,
        pk("ExecutionID"),
        col("ParentExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=True),
        col("OriginalExecutionID", BigInteger, nullable=True),
        col("ExternalExecutionID", Unicode(800), nullable=False),
        col("PackageID", BigInteger, fk("Package", "PackageID"), nullable=False),
        col("ExecutionStatus", String(1), nullable=False),
        col("NextLoadStatus", String(1), nullable=False),
        col("AttemptNumber", Integer, nullable=False, server_default=text("1")),
        col("AuditID", BigInteger, nullable=True),
        col("OperatorFingerprint", String(64), nullable=True),
        col("ItemFingerprint", String(64), nullable=False, server_default=text("''")),
        col("LeaseOwner", Unicode(255), nullable=True),
        col("LeaseExpiresAt", UtcDateTime, nullable=True),
        col("StartTime", UtcDateTime, nullable=False, server_default=now),
        col("EndTime", UtcDateTime, nullable=True),
        col("DagId", Unicode(250), nullable=False),
        col("RunId", Unicode(250), nullable=False),
        col("TaskId", Unicode(250), nullable=True),
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
    )

    Table(
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

    Table(
        n("ExecutionCheckpoint"),
        md,
        pk("CheckpointID"),
        col("ScopeKey", Unicode(200), nullable=False),
        col("ExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=False),
        col("CheckpointType", String(20), nullable=False),
        col("NodeKey", Unicode(200), nullable=False),
        col("IterationKey", String(40), nullable=False, server_default=text("''")),
        col("ItemFingerprint", String(64), nullable=True),
        col("OperatorFingerprint", String(64), nullable=True),
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

    Table(
        n("ExecutionRowCount"),
        md,
        pk("RowCountID"),
        col("ExecutionID", BigInteger, fk("Execution", "ExecutionID"), nullable=False),
        col("ObjectName", Unicode(500), nullable=False),
        col("CountType", String(50), nullable=False),
        col("RecordCount", BigInteger, nullable=False),
        col("CreatedAt", UtcDateTime, nullable=False, server_default=now),
        Index("ix_executionrowcount_execution", "ExecutionID"),
    )
    return md
