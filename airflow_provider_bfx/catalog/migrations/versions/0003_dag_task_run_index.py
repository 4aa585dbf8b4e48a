"""The rows of one task of a DAG: index ``ix_execution_dag_task_run``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

``bfx.Execution`` rows by (``DagId``, ``TaskId``, ``RunId``, ``MapIndex``, ``ExecutionID``), for
two reads that otherwise grow with the run or the catalog (issue 12, decision 0100):

* the gate's upstream check: the latest row of each upstream task (and map index) of one DAG
  run. On (``DagId``, ``RunId``) alone it visited every row of the run, so a run of n tasks
  read O(n²) rows; here each upstream is a seek, and "no later row of this slot" one probe;
* a task package's first registration, which checks that no execution of that task exists
  without its package (a package deleted by hand): a seek instead of a scan of the table.

``TaskId`` comes before ``RunId`` so that the second read (no run) seeks too; the index on
(``DagId``, ``RunId``) stays for reads of a whole run (``bfx history``, joins from Airflow).

Key width on SQL Server: three ``NVARCHAR(250)`` (1,500 bytes) + ``INT`` + ``BIGINT`` = 1,512
bytes, under the 1,700-byte limit of a nonclustered index key.

Frozen once released: the table shape it indexes is written out here, never read from
``schema.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import BigInteger, Column, Integer, Unicode
from sqlalchemy.schema import CreateIndex, DropIndex, Index, MetaData, Table

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID_LEN = 250
_NAME = "ix_execution_dag_task_run"
_COLUMNS = ("DagId", "TaskId", "RunId", "MapIndex", "ExecutionID")


def _index() -> Index:
    """The index on this engine's ``bfx.Execution`` (names lower case on PostgreSQL)."""
    dialect = op.get_context().dialect.name

    def n(col: str) -> str:
        return col.lower() if dialect == "postgresql" else col

    execution = Table(
        n("Execution"),
        MetaData(schema=None if dialect == "sqlite" else "bfx"),
        Column(n("ExecutionID"), BigInteger),
        Column(n("DagId"), Unicode(_ID_LEN)),
        Column(n("RunId"), Unicode(_ID_LEN)),
        Column(n("TaskId"), Unicode(_ID_LEN)),
        Column(n("MapIndex"), Integer),
    )
    return Index(_NAME, *(execution.c[n(c)] for c in _COLUMNS))


def upgrade() -> None:
    op.execute(CreateIndex(_index()))


def downgrade() -> None:
    op.execute(DropIndex(_index()))
