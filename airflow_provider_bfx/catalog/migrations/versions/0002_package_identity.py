"""Package identity: ``DagId`` and ``TaskId`` columns; ``PackageName`` = ``dag_id/task_id``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Release 0.1.0 named a task package ``dag_id.task_id`` and looked packages up by that name. Both
ids may hold dots, so DAG ``a`` task ``b.c`` and DAG ``a.b`` task ``c`` shared one row, and the
DAG ``a.b`` shared its batch package with the task ``b`` of DAG ``a`` (issue 9, item 1). This
revision adds the identity DESIGN.md §3 states and converts the catalog's rows to it:

1. every existing package gets the identity it was created for: a batch package its name, a task
   package its parent's name and the rest of its own name after that name and the dot;
2. task packages are renamed ``dag_id/task_id`` (``/`` never occurs in an Airflow id, so no new
   name can meet an old one);
3. every ``Execution`` row says itself which DAG and task it ran (its ``DagId`` and ``TaskId``
   columns): an identity that has no package yet (the second owner of a shared row) gets one,
   the execution moves to its own package, and a checkpoint it wrote moves with it (its scope
   key names the package);
4. task packages hang under their own DAG's batch package, ``IsBatch`` follows ``TaskId``;
5. ``DagId`` becomes NOT NULL, ``PackageName`` holds 501 characters (``dag_id/task_id`` at
   Airflow's 250-character limit each), and (``DagId``, ``TaskId``) is unique.

Every step is one set-based SQLAlchemy Core statement, so the same code converts a live
catalog (``bfx catalog upgrade``) and renders in the script a DBA runs (``bfx catalog ddl
--from-revision 0001``). SQLite cannot change a column's type or nullability in place: there
``DagId`` is added NOT NULL with an empty default (which the conversion overwrites) and the
``PackageName`` length stays as declared, which SQLite never enforced anyway.

Frozen once released, like 0001: the table shapes it reads are written out here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    SmallInteger,
    String,
    TableClause,
    Unicode,
    and_,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.schema import CreateIndex, DropIndex, Index, MetaData, Table

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID_LEN = 250
_OLD_NAME_LEN = 500
_NEW_NAME_LEN = 501
_INDEX = "uq_package_dagid_taskid"


class _Names:
    """Catalog names on the migrated engine: lower case on PostgreSQL, as 0001 created them."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.schema = None if dialect == "sqlite" else "bfx"

    def __call__(self, name: str) -> str:
        return name.lower() if self.dialect == "postgresql" else name

    def package(self) -> TableClause:
        n = self
        return table(
            n("Package"),
            column(n("PackageID"), BigInteger),
            column(n("PackageName"), Unicode),
            column(n("DagId"), Unicode),
            column(n("TaskId"), Unicode),
            column(n("ParentPackageID"), BigInteger),
            column(n("IsBatch"), SmallInteger),
            schema=self.schema,
        )

    def execution(self) -> TableClause:
        n = self
        return table(
            n("Execution"),
            column(n("ExecutionID"), BigInteger),
            column(n("PackageID"), BigInteger),
            column(n("DagId"), Unicode),
            column(n("TaskId"), Unicode),
            schema=self.schema,
        )

    def checkpoint(self) -> TableClause:
        n = self
        return table(
            n("ExecutionCheckpoint"),
            column(n("ExecutionID"), BigInteger),
            column(n("ScopeKey"), Unicode),
            schema=self.schema,
        )

    def identity_index(self) -> Index:
        n = self
        package = Table(
            n("Package"),
            MetaData(schema=self.schema),
            Column(n("DagId"), Unicode(_ID_LEN)),
            Column(n("TaskId"), Unicode(_ID_LEN)),
        )
        return Index(_INDEX, package.c[n("DagId")], package.c[n("TaskId")], unique=True)


def _same_identity(p: Any, e: Any, n: _Names) -> ColumnElement[bool]:
    """Package ``p`` is the package of execution ``e``: same DAG, same task (both NULL for a
    batch). Written out because ``NULL = NULL`` is not true in SQL."""
    P, E = p.c, e.c
    return and_(
        P[n("DagId")] == E[n("DagId")],
        or_(
            P[n("TaskId")] == E[n("TaskId")],
            and_(P[n("TaskId")].is_(None), E[n("TaskId")].is_(None)),
        ),
    )


def upgrade() -> None:
    n = _Names(op.get_context().dialect.name)
    sqlite = n.dialect == "sqlite"
    pkg_table = n("Package")

    # 0. The identity columns. SQLite adds a NOT NULL column only with a default.
    if sqlite:
        op.add_column(
            pkg_table,
            Column(n("DagId"), Unicode(_ID_LEN), nullable=False, server_default=""),
            schema=n.schema,
        )
    else:
        op.add_column(pkg_table, Column(n("DagId"), Unicode(_ID_LEN)), schema=n.schema)
    op.add_column(pkg_table, Column(n("TaskId"), Unicode(_ID_LEN)), schema=n.schema)

    P = n.package()
    E = n.execution()
    C = n.checkpoint()
    pc, ec, cc = P.c, E.c, C.c
    parent = P.alias("parent")

    # 1. The identity each existing package was created for.
    op.execute(
        update(P)
        .where(pc[n("IsBatch")] == 1)
        .values({n("DagId"): pc[n("PackageName")], n("TaskId"): None})
    )
    parent_name = (
        select(parent.c[n("PackageName")])
        .where(parent.c[n("PackageID")] == pc[n("ParentPackageID")])
        .scalar_subquery()
    )
    op.execute(
        update(P)
        .where(pc[n("IsBatch")] == 0, pc[n("ParentPackageID")].is_not(None))
        .values(
            {
                n("DagId"): parent_name,
                n("TaskId"): func.substring(
                    pc[n("PackageName")],
                    func.length(parent_name) + 2,
                    func.length(pc[n("PackageName")]),
                ),
            }
        )
    )
    # A task package without a parent was never written by the store (a hand insert): it is
    # taken as what its name says, a package of its own name.
    op.execute(
        update(P)
        .where(pc[n("IsBatch")] == 0, pc[n("ParentPackageID")].is_(None))
        .values({n("DagId"): pc[n("PackageName")], n("TaskId"): None})
    )

    # 2. The new names of task packages (no old name holds '/', so none can collide).
    op.execute(
        update(P)
        .where(pc[n("TaskId")].is_not(None))
        .values({n("PackageName"): pc[n("DagId")] + "/" + pc[n("TaskId")]})
    )

    # 3. A package for every identity the executions ran as and no package has: first the DAGs'
    #    batch packages, then the tasks' (under their DAG's batch package).
    has_batch = exists().where(pc[n("DagId")] == ec[n("DagId")], pc[n("TaskId")].is_(None))
    dags = (
        select(ec[n("DagId")].label("dag_id"))
        .where(ec[n("TaskId")].is_(None), ~has_batch)
        .distinct()
        .subquery("dags")
    )
    op.execute(
        insert(P).from_select(
            [n("PackageName"), n("DagId"), n("IsBatch")],
            select(dags.c.dag_id, dags.c.dag_id, literal(1, SmallInteger)),
        )
    )
    has_task = exists().where(pc[n("DagId")] == ec[n("DagId")], pc[n("TaskId")] == ec[n("TaskId")])
    tasks = (
        select(ec[n("DagId")].label("dag_id"), ec[n("TaskId")].label("task_id"))
        .where(ec[n("TaskId")].is_not(None), ~has_task)
        .distinct()
        .subquery("tasks")
    )
    batch_of = (
        select(parent.c[n("PackageID")])
        .where(parent.c[n("DagId")] == tasks.c.dag_id, parent.c[n("TaskId")].is_(None))
        .scalar_subquery()
    )
    op.execute(
        insert(P).from_select(
            [n("PackageName"), n("DagId"), n("TaskId"), n("ParentPackageID"), n("IsBatch")],
            select(
                tasks.c.dag_id + "/" + tasks.c.task_id,
                tasks.c.dag_id,
                tasks.c.task_id,
                batch_of,
                literal(0, SmallInteger),
            ),
        )
    )

    # 4. Checkpoints follow their writer to its own package (the scope key names the package),
    #    then the executions move.
    own = P.alias("own")
    moved = exists().where(
        ec[n("ExecutionID")] == cc[n("ExecutionID")],
        _same_identity(own, E, n),
        own.c[n("PackageID")] != ec[n("PackageID")],
    )
    old_id = (
        select(ec[n("PackageID")])
        .where(ec[n("ExecutionID")] == cc[n("ExecutionID")])
        .scalar_subquery()
    )
    new_id = (
        select(own.c[n("PackageID")])
        .select_from(E.join(own, _same_identity(own, E, n)))
        .where(ec[n("ExecutionID")] == cc[n("ExecutionID")])
        .scalar_subquery()
    )
    op.execute(
        update(C)
        .where(moved)
        .values(
            {
                n("ScopeKey"): func.replace(
                    cc[n("ScopeKey")],
                    "/P" + cast(old_id, String) + "/",
                    "/P" + cast(new_id, String) + "/",
                )
            }
        )
    )
    fits = exists().where(pc[n("PackageID")] == ec[n("PackageID")], _same_identity(P, E, n))
    op.execute(
        update(E)
        .where(~fits)
        .values(
            {
                n("PackageID"): select(own.c[n("PackageID")])
                .where(_same_identity(own, E, n))
                .scalar_subquery()
            }
        )
    )

    # 5. Task packages under their own DAG's batch package; IsBatch follows the identity.
    own_batch = (
        select(parent.c[n("PackageID")])
        .where(parent.c[n("DagId")] == pc[n("DagId")], parent.c[n("TaskId")].is_(None))
        .scalar_subquery()
    )
    op.execute(
        update(P).where(pc[n("TaskId")].is_not(None)).values({n("ParentPackageID"): own_batch})
    )
    op.execute(update(P).where(pc[n("TaskId")].is_(None)).values({n("IsBatch"): 1}))
    op.execute(update(P).where(pc[n("TaskId")].is_not(None)).values({n("IsBatch"): 0}))

    # 6. Constraints.
    if not sqlite:
        op.alter_column(
            pkg_table,
            n("DagId"),
            existing_type=Unicode(_ID_LEN),
            nullable=False,
            schema=n.schema,
        )
        op.alter_column(
            pkg_table,
            n("PackageName"),
            existing_type=Unicode(_OLD_NAME_LEN),
            type_=Unicode(_NEW_NAME_LEN),
            existing_nullable=False,
            schema=n.schema,
        )
    op.execute(CreateIndex(n.identity_index()))


def downgrade() -> None:
    """Back to 0.1.0's names. Fails on a unique violation when two packages would share an old
    name (the ambiguity this revision removed): such a catalog cannot go back without losing
    one of them, and no row is changed."""
    n = _Names(op.get_context().dialect.name)
    P = n.package()
    pc = P.c
    op.execute(DropIndex(n.identity_index()))
    op.execute(
        update(P)
        .where(pc[n("TaskId")].is_not(None))
        .values({n("PackageName"): pc[n("DagId")] + "." + pc[n("TaskId")]})
    )
    if n.dialect != "sqlite":
        op.alter_column(
            n("Package"),
            n("PackageName"),
            existing_type=Unicode(_NEW_NAME_LEN),
            type_=Unicode(_OLD_NAME_LEN),
            existing_nullable=False,
            schema=n.schema,
        )
    op.drop_column(n("Package"), n("TaskId"), schema=n.schema)
    op.drop_column(n("Package"), n("DagId"), schema=n.schema)
