"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Write the DDL for all three engines (op.get_context().dialect.name is postgresql, mssql or
sqlite): on PostgreSQL create every new name lower case, as schema.py does, so that unquoted
PascalCase queries keep working. Keep it renderable in offline mode: `bfx catalog ddl` turns
this file into the script a DBA runs by hand, so never read from the database here.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
