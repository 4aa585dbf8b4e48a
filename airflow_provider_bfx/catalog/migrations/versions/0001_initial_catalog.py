"""Initial catalog: the five tables of DESIGN.md §3 with their constraints and indexes.

Revision ID: 0001
Revises:
Create Date: 2025-11-22

The statements are SQLAlchemy DDL constructs passed to ``op.execute`` rather than
``op.create_table`` calls on live metadata, so that the same code runs against a database and
renders in offline mode (``bfx catalog ddl``) for all three engines.

The schema ``bfx`` itself is created by ``env.py``, not here: Alembic writes its version table
(``bfx.bfx_alembic_version``) before the first revision runs, so the schema must exist first.

This revision reads :func:`build_schema` while no catalog has been released. Once one has, it
must be frozen (the tables written out here) before ``schema.py`` changes, and every change
becomes a new revision: see docs/decisions/0021-migration-0001-follows-schema-until-release.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy.schema import CreateIndex, CreateTable, DropTable

from airflow_provider_bfx.catalog.schema import build_schema

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    catalog = build_schema(op.get_context().dialect.name)
    # sorted_tables puts every table after the tables its foreign keys reference.
    for table in catalog.metadata.sorted_tables:
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            op.execute(CreateIndex(index))


def downgrade() -> None:
    catalog = build_schema(op.get_context().dialect.name)
    # Dropping a table drops its indexes; children first so that no foreign key is left dangling.
    for table in reversed(catalog.metadata.sorted_tables):
        op.execute(DropTable(table))
