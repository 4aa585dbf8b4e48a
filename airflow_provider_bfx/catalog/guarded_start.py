"""A task's first start in its lineage, in one guarded INSERT. No Airflow here; no decision
either: the state machine's own answer is written (decision 0121).

Most task starts are the first try of a task in a batch that resumes nothing: no row of the
task in the lineage, nothing of it running, its package enabled. For those facts
:func:`.machine.task_start` decides the same plain row whatever else is true
(:func:`.machine.task_start_guard` works out the batch statuses for which that holds, from
the table). Such a start need not read its facts first:

``INSERT INTO Execution (...) SELECT <the row> FROM <the batch row, locked as every transition
locks it> JOIN <the task package> WHERE <the batch row's status is in the guard's set, the
batch not closed, the package enabled, no row of the task and item in the lineage, none
active, no row with this try's key> RETURNING <the new row's ids>``.

One row inserted: done, and the start returns what the full path would have returned for that
decision (the row's values come from :func:`.tasks.start_row`, its result from
:func:`.tasks.started`). No row: nothing was written, and the start reads, decides and writes
as before (:func:`.tasks.start_task_txn`), in a transaction of its own.

On PostgreSQL the statement runs outside any transaction (:meth:`.txn.Catalog.transaction`'s
``one_statement``): one round trip, the server commits it. On SQLite it is one statement in
the usual ``BEGIN IMMEDIATE`` transaction. SQL Server does not know a new row's id before
its INSERT (:meth:`.dialects.CatalogDialect.next_id`) and keeps the full path.

Why it is as safe as the read: the batch row's lock is the one every transition takes first.
Under READ COMMITTED PostgreSQL re-checks the locked batch row after a wait, but reads the
NOT EXISTS subqueries as of the statement's start (decision 0007). What another transition
could have written meanwhile: a row of this task that is active (another try, or the same
one started twice) violates ``uq_execution_one_active`` or ``uq_execution_externalexecutionid``;
the transaction wrapper re-runs the statement, which now sees that row and matches nothing,
and the full path decides (refused, or the same try again). A terminal row of this task in
this lineage is written only by a transition that found the task's earlier rows there (skip
ahead, a resumed lineage's starts), so the guard did not hold before the wait either.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, insert, literal, select, true

from airflow_provider_bfx.catalog import machine
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.leases import active_task
from airflow_provider_bfx.catalog.pipeline import prepared
from airflow_provider_bfx.catalog.results import TaskSpec, TaskStarted
from airflow_provider_bfx.catalog.rows import SELF, item_rows, one_of
from airflow_provider_bfx.catalog.tasks import start_row, started
from airflow_provider_bfx.catalog.txn import Catalog

#: The columns the statement reads from the rows it selects: the new id (and the columns a
#: first start sets to it, ``SELF`` in :func:`.tasks.start_row`), the batch row's, the package's.
_FROM_STATEMENT = (
    "ExecutionID",
    "OriginalExecutionID",
    "AuditID",
    "ParentExecutionID",
    "LineageID",
    "PackageID",
)
_VALUE = "p_v_"  # a column's value, bound per call (``p_``: an argument of the prepared text)
_READ: Any = object()  # in :func:`.tasks.start_row`: a value the statement reads, not binds


def start_guarded(cat: Catalog) -> CompiledStatement | None:
    """The guarded INSERT of a first start (module docstring), compiled once per process;
    None when the machine has no guard or the engine cannot name a new id in SQL."""
    guard = machine.task_start_guard()
    if guard is None or not cat.memo("knows_next_id", lambda: cat.impl.next_id() is not None):
        return None

    def build() -> Any:
        next_id = cat.impl.next_id()
        assert next_id is not None
        E, P = cat.s.Execution, cat.s.Package
        b, tp = E.alias("b"), P.alias("tp")
        a, mine, x = E.alias("a"), E.alias("mine"), E.alias("x")
        item: Any = bindparam("p_item")
        n = select(next_id.label("id")).subquery("n")
        read = {
            "ExecutionID": n.c.id,
            "OriginalExecutionID": n.c.id,
            "AuditID": n.c.id,
            "ParentExecutionID": b.c.ExecutionID,
            "LineageID": b.c.LineageID,
            "PackageID": tp.c.PackageID,
        }
        columns = [c.key for c in E.c]
        values = [
            read[k]
            if k in read
            else cat.impl.typed(bindparam(_VALUE + k, type_=E.c[k].type), E.c[k].type)
            for k in columns
        ]
        source = (
            select(*values)
            .select_from(
                b.join(
                    tp, and_(tp.c.DagId == bindparam("p_dag"), tp.c.TaskId == bindparam("p_task"))
                ).join(n, true())
            )
            .where(
                b.c.ExternalExecutionID == bindparam("p_batch_key"),
                one_of(b.c.ExecutionStatus, sorted(s.value for s in guard.batch)),
                b.c.EndTime.is_(None),  # not closed: a closed batch is reopened first
                tp.c.IsEnabled == literal(1),
                # Nothing active of this task and item, in any lineage: the partial unique
                # index's own predicate, one probe (as the facts query states it, 0111).
                ~exists().where(
                    a.c.PackageID == tp.c.PackageID, a.c.ItemFingerprint == item, active_task(a)
                ),
                # No row of this task and item in the lineage: no prior, no first, no landed
                # copy, nothing written ahead (the lineage index).
                ~exists().where(item_rows(cat, mine, b.c.LineageID, tp.c.PackageID, item)),
                ~exists().where(x.c.ExternalExecutionID == bindparam("p_task_key")),
            )
        )
        statement = (
            insert(E)
            .from_select(columns, cat.impl.lock(source, b))
            .returning(
                E.c.ExecutionID.label("new_id"),
                E.c.ParentExecutionID.label("batch_id"),
                E.c.LineageID.label("lineage_id"),
                E.c.PackageID.label("package_id"),
            )
        )
        return prepared(statement, "start_first")

    return compiled(cat, "task_start_guarded", build)


def worth_trying(spec: TaskSpec) -> bool:
    """Whether ``spec``'s start may be a first start in its lineage, so that trying the guarded
    INSERT first is likely to save a round trip rather than cost one: its first try (a later
    try of the run has the earlier one's row in the lineage), and the caller does not expect
    otherwise (``TaskSpec.read_first``: a task that may create its run's batch, or one with
    rows in earlier runs of the lineage). A start that tries and misses pays one round trip
    more than the full path (a deferred try resumed in a new process, a task package seen for
    the first time)."""
    return spec.try_number == 1 and not spec.read_first


def start_task_guarded_txn(cat: Catalog, conn: Connection, spec: TaskSpec) -> TaskStarted | None:
    """A task start in one statement when the guard holds (module docstring); None when it
    wrote nothing: the caller then reads the facts and decides (:func:`.tasks.start_task_txn`).
    """
    guard = machine.task_start_guard()
    statement = start_guarded(cat)
    if guard is None or statement is None:
        return None
    row = start_row(
        spec,
        guard.decision,
        cat.clock(),
        batch_id=_READ,
        lineage_id=_READ,
        package_id=_READ,
        lineage_first=None,
    )
    # The statement's shape holds for the guard's decision: its own id where the row refers
    # to itself, the batch row's and the package's ids read.
    assert all(row[k] in (SELF, _READ) for k in _FROM_STATEMENT if k in row), row
    params = {_VALUE + k: v for k, v in row.items() if k not in _FROM_STATEMENT}
    params.update(
        p_item=spec.item_fingerprint,
        p_dag=spec.batch.dag_id,
        p_task=spec.task_id,
        p_batch_key=spec.batch.external_id,
        p_task_key=spec.external_id,
    )
    found = statement.rows(conn, params)
    if not found:
        return None
    (new,) = found
    return started(
        spec,
        guard.decision,
        [],
        new_id=int(new.new_id),
        batch_id=int(new.batch_id),
        lineage_id=int(new.lineage_id),
        package_id=int(new.package_id),
        lineage_first=None,
    )
