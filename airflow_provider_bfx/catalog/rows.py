"""SQL pieces the transitions share: status sets, predicates, the Execution INSERT, and the
one home of "which execution decides". No Airflow here."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    String,
    and_,
    case,
    exists,
    insert,
    literal_column,
    or_,
    select,
    update,
)

from airflow_provider_bfx.catalog import keys, machine
from airflow_provider_bfx.catalog.codes import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    CheckpointType,
    NextLoadStatus,
    format_token,
)
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.txn import Catalog

log = logging.getLogger("airflow_provider_bfx.catalog")

ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)
TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


def one_of(column: Any, codes: Iterable[str]) -> ColumnElement[bool]:
    """``column IN ('D', 'E', 'R')`` with the codes written into the statement. A list of
    constants as an expanding parameter is re-rendered into the SQL text at every execution;
    in the facts queries, built once per store, that was a tenth of their Python (decision
    0105). The codes are the catalog's own one-letter constants, never user input."""
    found: ColumnElement[bool] = column.in_([literal_column(f"'{code}'", String) for code in codes])
    return found


class _Self:
    """Marker: this column takes the new row's own ExecutionID."""

    def __repr__(self) -> str:
        return "SELF"


SELF: Any = _Self()


def decides(row: Any) -> ColumnElement[bool]:
    """Whether execution ``row`` (an ``Execution`` table or alias) may decide the next start of
    its task and item in its lineage; the latest such row does. The one home of this rule: the
    task start's facts query, ``bfx plan`` and ``bfx reset`` all use it.

    An active row decides nothing (it is running, or its lease decides). A start that never ran
    and carries no instruction (refused A/P, disabled C/P, a skip row whose C was reset when its
    lineage closed) decides nothing either: the instruction before it stands
    (docs/decisions/0008). Every other row decides, *including one whose status is not a known
    code* (a hand edit with the CHECK constraint dropped): reading it names the row
    (``CorruptRowError``) instead of passing over it and running the task again.
    """
    return and_(
        ~one_of(row.c.ExecutionStatus, ACTIVE),
        or_(row.c.LeaseOwner.is_not(None), row.c.NextLoadStatus != NextLoadStatus.PENDING.value),
    )


def flag(condition: Any) -> Any:
    """A predicate as a 0/1 column: T-SQL does not allow ``EXISTS (...)`` in a select list."""
    return case((condition, 1), else_=0)


def by_lineage_index(cat: Catalog) -> bool:
    """Whether the per-item lookups of this catalog are written so that only
    ``ix_execution_lineage_package`` can serve them in order (:func:`item_rows`)."""
    return cat.dialect == "postgresql"


def item_rows(cat: Catalog, row: Any, lineage: Any, package: Any, item: Any) -> Any:
    """``row`` (an ``Execution`` alias) is an execution of task package ``package`` and item
    ``item`` in lineage ``lineage``: the key of ``ix_execution_lineage_package``.

    On PostgreSQL the item is stated as a range of one value (``>= item AND <= item``: the same
    rows), and the lookups that use it order by ``(ItemFingerprint, ExecutionID)``
    (:func:`item_rows_ordered`). A prepared facts query runs a generic plan (decision 0105),
    which takes ``PackageID = $n`` at its average selectivity; in a catalog whose packages
    held one row each when it was last analyzed (after a first run of many DAGs), that is one
    row, and ``ix_execution_package_id (PackageID, ExecutionID)`` then costs exactly what the
    lineage index costs and, being the older index, was taken: every row of the package read
    per start, O(items) for a mapped task. An equality on the item makes its sort key constant
    (dropped); a range does not, so only the lineage index returns the rows in that order
    without a sort, and the plan takes it whatever the statistics (decision 0111). The btree
    still positions on and stops at the exact item: the columns before it are equalities.
    SQLite and SQL Server keep the equality (their planners take the lineage index)."""
    if not by_lineage_index(cat):
        return and_(
            row.c.LineageID == lineage, row.c.PackageID == package, row.c.ItemFingerprint == item
        )
    return and_(
        row.c.LineageID == lineage,
        row.c.PackageID == package,
        row.c.ItemFingerprint >= item,
        row.c.ItemFingerprint <= item,
    )


def item_rows_ordered(row: Any, *, latest: bool) -> tuple[Any, Any]:
    """The order of ``ix_execution_lineage_package`` within one item (:func:`item_rows`):
    the latest execution first, or the first."""
    if latest:
        return row.c.ItemFingerprint.desc(), row.c.ExecutionID.desc()
    return row.c.ItemFingerprint.asc(), row.c.ExecutionID.asc()


def landed_copies(
    cat: Catalog, lineage: Any, package: Any, item: Any, *, correlate: tuple[Any, ...], name: str
) -> tuple[Any, Any, tuple[Any, ...]]:
    """The copy steps that landed for one task package and item in one lineage: the ``copy``
    NODE_OUTPUT checkpoints written by any execution of that item there.

    Returns ``(checkpoint, from_, where)``: the checkpoint alias (``{name}c``) to select from,
    the FROM clause and the WHERE conditions. ``correlate`` are the outer query's tables that
    ``lineage``, ``package`` and ``item`` come from.

    On PostgreSQL the executions of the item are a subquery in FROM in the lineage index's
    order (:func:`item_rows`, :func:`item_rows_ordered`): a subquery with an ORDER BY is planned
    on its own, in that order, so from ``ix_execution_lineage_package`` whatever the statistics
    (decision 0111). Elsewhere, a plain join of the checkpoints to the executions."""
    E, C = cat.s.Execution, cat.s.ExecutionCheckpoint
    w, c = E.alias(f"{name}w"), C.alias(f"{name}c")
    landed = (c.c.CheckpointType == CheckpointType.NODE_OUTPUT.value, c.c.NodeKey == keys.COPY_NODE)
    mine = item_rows(cat, w, lineage, package, item)
    if not by_lineage_index(cat):
        return c, c.join(w, w.c.ExecutionID == c.c.ExecutionID), (*landed, mine)
    writers = (
        select(w.c.ExecutionID)
        .where(mine)
        .order_by(*item_rows_ordered(w, latest=False))
        .correlate(*correlate)
        .subquery(f"{name}writers")
    )
    return c, writers.join(c, c.c.ExecutionID == writers.c.ExecutionID), landed


def copy_landed(cat: Catalog, row: Any) -> Any:
    """EXISTS: a copy step of ``row``'s task and item landed in its lineage
    (:func:`landed_copies`)."""
    _, from_, where = landed_copies(
        cat, row.c.LineageID, row.c.PackageID, row.c.ItemFingerprint, correlate=(row,), name=""
    )
    return exists().select_from(from_).where(*where)


def execution_insert(cat: Catalog, columns: Iterable[str]) -> CompiledStatement:
    """The Execution INSERT of ``columns`` with a known ExecutionID, compiled once per process
    for each set of columns (sorted, so that a set names one statement whatever order its row
    was built in; :mod:`.compiled`)."""
    keys = tuple(sorted(columns))
    return compiled(
        cat,
        "insert_execution:" + ",".join(keys),
        lambda: insert(cat.s.Execution),
        column_keys=keys,
    )


def _nullable_without_default(cat: Catalog) -> frozenset[str]:
    """The Execution columns whose value, when an INSERT omits them, is NULL."""
    return cat.memo(
        "execution_nullable_without_default",
        lambda: frozenset(
            c.key
            for c in cat.s.Execution.c
            if c.nullable and c.default is None and c.server_default is None
        ),
    )


def insert_execution_txn(
    cat: Catalog, conn: Connection, next_id: int | None, values: dict[str, Any]
) -> int:
    """Insert an Execution row whose OriginalExecutionID/LineageID/AuditID may be itself
    (passed as the marker ``SELF``)."""
    E = cat.s.Execution
    if next_id is not None:
        row = {k: (next_id if v is SELF else v) for k, v in values.items()}
        row["ExecutionID"] = next_id
        # A column the row leaves out that has no default is written NULL, as omitting it
        # would: so a batch row (no task, no lease) and a task row are one statement, the one
        # :mod:`.warm` compiles (decision 0119).
        for key in _nullable_without_default(cat):
            row.setdefault(key, None)
        # One statement, compiled once per set of columns, the values as parameters: building
        # ``insert().values()`` per row cost more Python than the rest of a task start
        # (decision 0105), executing it through ``Connection.execute`` a third (0108).
        execution_insert(cat, row).write(conn, row)  # with the COMMIT (0101)
        return next_id
    plain = {k: (None if v is SELF else v) for k, v in values.items()}
    new_id = int(conn.execute(insert(E).values(**plain).returning(E.c.ExecutionID)).scalar_one())
    selfish = {k: new_id for k, v in values.items() if v is SELF}
    if selfish:
        conn.execute(update(E).where(E.c.ExecutionID == new_id).values(**selfish))
    return new_id


# -- token lines: built inside a transition, logged after its commit ----------------------------


def token_line(emit: machine.Emit, **context: object) -> str:
    return format_token(emit.token, **{**context, **dict(emit.context)})


def nested_line(**context: object) -> str:
    """``[bfx] nested batch key=value ...``: not one of the contract's tokens (a nested batch's
    resume is also ``BFX_BATCH_RESUME ... parent_execution_id=``), see docs/decisions/0070."""
    text = format_token("bfx", **context)
    return "[bfx] nested batch" + text[len("[bfx]") :]


def log_lines(lines: Iterable[str]) -> None:
    for text in lines:
        log.info("%s", text)
