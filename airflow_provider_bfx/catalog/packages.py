"""Package rows: a DAG's and each of its tasks', registered on first sight. No Airflow here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, func, insert, select, update

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.exceptions import CatalogStateError


class Unset:
    """Marker: leave a column as it is."""


def package_query(cat: Catalog, dag_id: str, task_id: str | None) -> Select[Any]:
    """The package of a DAG (``task_id`` None) or of one of its tasks, by its identity."""
    P = cat.s.Package
    task = P.c.TaskId.is_(None) if task_id is None else P.c.TaskId == task_id
    return select(P).where(P.c.DagId == dag_id, task)


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
