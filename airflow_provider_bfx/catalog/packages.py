"""Package rows: a DAG's and each of its tasks', registered on first sight. No Airflow here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, case, func, insert, null, select, update

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.compiled import compiled
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.exceptions import CatalogStateError


class Unset:
    """Marker: leave a column as it is."""


def package_query(cat: Catalog, dag_id: str, task_id: str | None) -> Select[Any]:
    """The package of a DAG (``task_id`` None) or of one of its tasks, by its identity."""
    P = cat.s.Package
    task = P.c.TaskId.is_(None) if task_id is None else P.c.TaskId == task_id
    return select(P).where(P.c.DagId == dag_id, task)


@dataclass(frozen=True)
class NewPackage:
    """A package registered by :func:`register_package_txn`: what the transitions read of a
    package row, known without reading it back."""

    PackageID: int
    IsEnabled: int
    RetryLimit: int
    MaxResumeAge: int | None

    @property
    def pkg_id(self) -> int:  # the batch-start facts query's name for PackageID
        return self.PackageID


class PackageFacts(NamedTuple):
    """What a facts query read of a package it did not find: its next id (None where the
    engine cannot know it before the INSERT) and the first execution that ran under the
    same identity (a package row deleted by hand)."""

    next_id: int | None
    orphan_id: int | None


def register_package_txn(
    cat: Catalog,
    conn: Connection,
    found: PackageFacts,
    dag_id: str,
    task_id: str | None,
    *,
    parent_id: int | None,
    retry_limit: int | None = None,
    max_resume_age: int | None = None,
) -> Any:
    """The package row of (``dag_id``, ``task_id``), which the caller's facts query found
    missing: inserted with the id that query took, as a write whose result is not read (on
    PostgreSQL it travels with the next statement, decision 0108), when the engine knows the
    id and no execution ran under that identity; otherwise :func:`ensure_package_txn` (its
    reads, and its error for a package row deleted by hand).

    A start racing this one registers the same identity: the second INSERT fails on the
    unique index (waiting for the first to commit), and the transaction wrapper re-runs the
    loser's transition, which then finds the row (an ``IntegrityError``, as before)."""
    if found.next_id is None or found.orphan_id is not None:
        return ensure_package_txn(
            cat,
            conn,
            dag_id,
            task_id,
            parent_id=parent_id,
            retry_limit=retry_limit,
            max_resume_age=max_resume_age,
        )
    P = cat.s.Package
    now = cat.clock()
    row = NewPackage(
        PackageID=found.next_id,
        IsEnabled=1,
        RetryLimit=retry_limit if retry_limit is not None else _default_retry_limit(cat),
        MaxResumeAge=max_resume_age,
    )
    values = {
        "PackageID": row.PackageID,
        "PackageName": keys.package_name(dag_id, task_id),
        "DagId": dag_id,
        "TaskId": task_id,
        "ParentPackageID": parent_id,
        "IsBatch": 1 if task_id is None else 0,
        "IsEnabled": row.IsEnabled,
        "RetryLimit": row.RetryLimit,
        "MaxResumeAge": row.MaxResumeAge,
        "CreatedAt": now,
        "UpdatedAt": now,
    }
    compiled(cat, "register_package", lambda: insert(P), column_keys=tuple(values)).write(
        conn, values
    )
    return row


def _default_retry_limit(cat: Catalog) -> int:
    """The ``RetryLimit`` a package gets when none is given: the column's server default
    (written explicitly, so the row is known without reading it back)."""
    default: Any = cat.s.Package.c.RetryLimit.server_default
    return int(default.arg.text)


def package_facts_columns(cat: Catalog, package: Any, dag_id: Any, task_id: Any) -> list[Any]:
    """``new_pkg_id`` and ``orphan_id`` (:class:`PackageFacts`) as columns of a facts query
    whose ``package`` (an alias of Package, outer-joined) may be missing: NULL when it is
    there. Uncorrelated scalar subqueries inside the CASE: PostgreSQL evaluates them (one
    InitPlan each, ``nextval`` included) only when the branch is taken, so a package already
    registered costs no id and no read."""
    E = cat.s.Execution
    missing = package.c.PackageID.is_(None)
    task = E.c.TaskId.is_(None) if task_id is None else E.c.TaskId == task_id
    orphan = select(func.min(E.c.ExecutionID)).where(E.c.DagId == dag_id, task).scalar_subquery()
    following = cat.impl.next_package_id()
    if following is None:
        new_id: Any = null()
    else:
        new_id = case((missing, select(following).scalar_subquery()), else_=null())
    return [
        new_id.label("new_pkg_id"),
        case((missing, orphan), else_=null()).label("orphan_id"),
    ]


def package_facts(row: Any) -> PackageFacts:
    """:class:`PackageFacts` from a row with :func:`package_facts_columns`."""
    return PackageFacts(
        None if row.new_pkg_id is None else int(row.new_pkg_id),
        None if row.orphan_id is None else int(row.orphan_id),
    )


def ensure_package_txn(
    cat: Catalog,
    conn: Connection,
    dag_id: str,
    task_id: str | None,
    *,
    parent_id: int | None,
    retry_limit: int | None = None,
    max_resume_age: int | None = None,
) -> Any:
    """The package row of (``dag_id``, ``task_id``), registered on first sight.

    A package that has executions but no row was deleted by hand (the foreign key stops
    that unless it is switched off, as in the ``sqlite3`` shell): recreating it would start
    its history over in silence, so the row is named instead.
    """
    P, E = cat.s.Package, cat.s.Execution
    row = conn.execute(package_query(cat, dag_id, task_id)).first()
    if row is not None:
        return row
    task = E.c.TaskId.is_(None) if task_id is None else E.c.TaskId == task_id
    # The first such execution, as min() over an index seek (ix_execution_dag_task_run): with
    # ORDER BY ExecutionID LIMIT 1 PostgreSQL walks the primary key, which for a package seen
    # for the first time (no row matches) reads the whole table (issue 12).
    first = select(func.min(E.c.ExecutionID)).where(E.c.DagId == dag_id, task).scalar_subquery()
    orphan = conn.execute(
        select(E.c.ExecutionID, E.c.PackageID).where(E.c.ExecutionID == first)
    ).first()
    if orphan is not None:
        # A start racing this one may have committed the package and its first execution
        # between the two reads above (READ COMMITTED reads each statement afresh): then the
        # row is there now. Only a row still missing was deleted.
        row = conn.execute(package_query(cat, dag_id, task_id)).first()
        if row is not None:
            return row
        what = f"DAG {dag_id!r}" + ("" if task_id is None else f" task {task_id!r}")
        raise CatalogStateError(
            f"{cat.s.qualified(P)} has no row for {what}, but"
            f" {cat.s.qualified(E)} row ExecutionID={orphan.ExecutionID} ran it under"
            f" PackageID={orphan.PackageID}: the Package row was deleted by hand. Restore"
            f" it (PackageID={orphan.PackageID}, DagId={dag_id!r}, TaskId={task_id!r}),"
            " or delete that package's executions too to start its history over"
        )
    now = cat.clock()
    settings: dict[str, Any] = {}
    if retry_limit is not None:
        settings["RetryLimit"] = retry_limit
    if max_resume_age is not None:
        settings["MaxResumeAge"] = max_resume_age
    conn.execute(
        insert(P).values(
            PackageName=keys.package_name(dag_id, task_id),
            DagId=dag_id,
            TaskId=task_id,
            ParentPackageID=parent_id,
            IsBatch=1 if task_id is None else 0,
            IsEnabled=1,
            CreatedAt=now,
            UpdatedAt=now,
            **settings,
        )
    )
    return conn.execute(package_query(cat, dag_id, task_id)).one()


def set_package_txn(
    cat: Catalog,
    conn: Connection,
    dag_id: str,
    task_id: str | None = None,
    *,
    enabled: bool | None = None,
    retry_limit: int | None = None,
    max_resume_age: int | None | type[Unset] = Unset,
) -> None:
    """Change the settings of a DAG's package (``task_id`` None) or of one of its tasks,
    registering it when it is not yet (a task's under its DAG's package)."""
    P = cat.s.Package
    parent_id = None
    if task_id is not None:
        parent_id = ensure_package_txn(cat, conn, dag_id, None, parent_id=None).PackageID
    pkg = ensure_package_txn(cat, conn, dag_id, task_id, parent_id=parent_id)
    values: dict[str, Any] = {"UpdatedAt": cat.clock()}
    if enabled is not None:
        values["IsEnabled"] = 1 if enabled else 0
    if retry_limit is not None:
        values["RetryLimit"] = retry_limit
    if max_resume_age is not Unset:
        values["MaxResumeAge"] = max_resume_age
    conn.execute(update(P).where(P.c.PackageID == pkg.PackageID).values(**values))
