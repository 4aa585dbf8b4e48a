"""What the recovery view shows, read from the catalog: typed, paginated, no Airflow here.

The UI plugin (``plugins/``) and ``bfx history`` read through these functions; none writes.
Every query is keyed on an index of ``schema.py`` (a package's batches by ``PackageID,
ExecutionID``; a batch's tasks by ``ParentExecutionID``; a lineage by ``LineageID``) and every
list is bounded, so a call costs the same with 1,000 or 1,000,000 executions in the catalog
(``benchmarks/bench_ui.py`` measures it).

A row that cannot be read as the contract's codes is shown as it is (the raw letter): a view
must help the person who is repairing a hand-edited row, not fail on it. Decisions still refuse
such rows (``parse_status`` in the task start names them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from airflow_provider_bfx.catalog.codes import CheckpointType, ExecutionStatus, NextLoadStatus
from airflow_provider_bfx.catalog.rows import decides
from airflow_provider_bfx.catalog.store import CatalogStore

#: Longest page a caller may ask for (batches, a task's executions).
MAX_PAGE = 200
#: Tasks drawn in one lineage timeline; the rest are counted, not drawn.
MAX_TIMELINE_TASKS = 400
#: Rows of one batch returned by :func:`batch_detail` (a 2,000-item mapped task fits).
MAX_BATCH_TASKS = 5000

#: Status counts by batch execution id.
Counts = dict[int, dict[str, int]]

RESTART = (NextLoadStatus.RETRY.value, NextLoadStatus.COMPUTE_ONLY.value)


@dataclass(frozen=True)
class BatchSummary:
    """One batch execution (a DAG run) with its tasks' status counts."""

    execution_id: int
    dag_id: str
    run_id: str
    lineage_id: int | None
    original_execution_id: int | None
    parent_execution_id: int | None
    attempt: int
    status: str
    next_load_status: str
    start_time: datetime
    end_time: datetime | None
    task_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPage:
    batches: list[BatchSummary]
    #: Pass as ``before`` to read the next (older) page; None on the last page.
    next_before: int | None


@dataclass(frozen=True)
class ErrorNote:
    error_type: str | None
    message: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class RowCount:
    object_name: str
    count_type: str
    rows: int


@dataclass(frozen=True)
class TaskRow:
    """One task execution of a batch, with what decided it and what it left behind."""

    execution_id: int
    task_id: str
    map_index: int | None
    item_fingerprint: str
    try_number: int | None
    status: str
    next_load_status: str
    attempt: int
    lineage_id: int | None
    original_execution_id: int | None
    #: The batch execution this task execution ran under.
    parent_execution_id: int | None
    #: The execution whose instruction this start followed (the latest deciding row of the
    #: same task and item earlier in the lineage): for a skip, the execution it reused.
    decided_by: int | None
    audit_id: int | None
    lease_owner: str | None
    start_time: datetime
    end_time: datetime | None
    errors: list[ErrorNote] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)
    #: FOREACH_PROGRESS checkpoints this execution wrote (items finished), if any.
    foreach_done: int | None = None
    row_counts: list[RowCount] = field(default_factory=list)


@dataclass(frozen=True)
class BatchDetail:
    batch: BatchSummary
    tasks: list[TaskRow]
    errors: list[ErrorNote]
    #: True when the batch has more task rows than :data:`MAX_BATCH_TASKS`.
    truncated: bool = False


@dataclass(frozen=True)
class TimelineCell:
    execution_id: int
    status: str
    next_load_status: str


@dataclass(frozen=True)
class Timeline:
    """A lineage as a grid: one column per attempt (batch), one row per task and item."""

    lineage_id: int
    attempts: list[BatchSummary]
    #: (label, cells by attempt number); a task that did not start in an attempt has no cell.
    tasks: list[tuple[str, dict[int, TimelineCell]]]
    hidden_tasks: int = 0


@dataclass(frozen=True)
class DagOverview:
    """A routed DAG on the "Recovery" page: its last batch and what waits for a restart."""

    dag_id: str
    enabled: bool
    last_batch: BatchSummary | None
    #: Tasks whose next start restarts them (instruction R or D), with the audit ID a
    #: compute-only restart (D) will reuse.
    waiting: list[TaskRow] = field(default_factory=list)


# -- helpers -----------------------------------------------------------------------------------


def _page_size(limit: int) -> int:
    if limit < 1 or limit > MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def _summary(row: Any, counts: dict[str, int] | None = None) -> BatchSummary:
    return BatchSummary(
        execution_id=int(row.ExecutionID),
        dag_id=str(row.DagId),
        run_id=str(row.RunId),
        lineage_id=row.LineageID,
        original_execution_id=row.OriginalExecutionID,
        parent_execution_id=row.ParentExecutionID,
        attempt=int(row.AttemptNumber),
        status=str(row.ExecutionStatus),
        next_load_status=str(row.NextLoadStatus),
        start_time=row.StartTime,
        end_time=row.EndTime,
        task_counts=dict(sorted((counts or {}).items())),
    )


def _counts(store: CatalogStore, conn: Connection, batch_ids: list[int]) -> Counts:
    E = store.s.Execution
    counts: Counts = defaultdict(dict)
    if batch_ids:
        for parent, status, n in conn.execute(
            select(E.c.ParentExecutionID, E.c.ExecutionStatus, func.count())
            .where(E.c.ParentExecutionID.in_(batch_ids), E.c.TaskId.is_not(None))
            .group_by(E.c.ParentExecutionID, E.c.ExecutionStatus)
        ):
            counts[int(parent)][str(status)] = int(n)
    return counts


def _task_row(
    r: Any,
    decided_by: int | None,
    errors: dict[int, list[ErrorNote]] | None = None,
    checkpoints: Counts | None = None,
    row_counts: dict[int, list[RowCount]] | None = None,
) -> TaskRow:
    eid = int(r.ExecutionID)
    cps = (checkpoints or {}).get(eid, {})
    return TaskRow(
        execution_id=eid,
        task_id=str(r.TaskId),
        map_index=r.MapIndex,
        item_fingerprint=str(r.ItemFingerprint or ""),
        try_number=r.TryNumber,
        status=str(r.ExecutionStatus),
        next_load_status=str(r.NextLoadStatus),
        attempt=int(r.AttemptNumber),
        lineage_id=r.LineageID,
        original_execution_id=r.OriginalExecutionID,
        parent_execution_id=r.ParentExecutionID,
        decided_by=decided_by,
        audit_id=r.AuditID,
        lease_owner=r.LeaseOwner,
        start_time=r.StartTime,
        end_time=r.EndTime,
        errors=(errors or {}).get(eid, []),
        checkpoints=cps,
        foreach_done=cps.get(CheckpointType.FOREACH_PROGRESS.value),
        row_counts=(row_counts or {}).get(eid, []),
    )


def _deciders(store: CatalogStore, conn: Connection, rows: Sequence[Any]) -> dict[int, int | None]:
    """For each task row: the latest deciding row of its task and item earlier in its lineage
    (``rows.decides``, the task start's own rule)."""
    E = store.s.Execution
    lineages = {r.LineageID for r in rows if r.LineageID is not None}
    packages = {r.PackageID for r in rows}
    if not lineages or not packages:
        return {int(r.ExecutionID): None for r in rows}
    history: dict[tuple[Any, Any, str], list[int]] = defaultdict(list)
    for lineage, package, item, eid in conn.execute(
        select(E.c.LineageID, E.c.PackageID, E.c.ItemFingerprint, E.c.ExecutionID)
        .where(E.c.LineageID.in_(lineages), E.c.PackageID.in_(packages), decides(E))
        .order_by(E.c.ExecutionID)
    ):
        history[(lineage, package, item or "")].append(int(eid))
    out: dict[int, int | None] = {}
    for r in rows:
        earlier = [
            e
            for e in history.get((r.LineageID, r.PackageID, r.ItemFingerprint or ""), [])
            if e < r.ExecutionID
        ]
        out[int(r.ExecutionID)] = earlier[-1] if earlier else None
    return out


def _details(
    store: CatalogStore, conn: Connection, ids: list[int]
) -> tuple[dict[int, list[ErrorNote]], Counts, dict[int, list[RowCount]]]:
    """Errors, checkpoint counts by type and row counts of these executions (three indexed
    reads, whatever their number)."""
    Err, C, RC = store.s.ExecutionError, store.s.ExecutionCheckpoint, store.s.ExecutionRowCount
    errors: dict[int, list[ErrorNote]] = defaultdict(list)
    checkpoints: Counts = defaultdict(dict)
    counts: dict[int, list[RowCount]] = defaultdict(list)
    for chunk in (ids[i : i + 900] for i in range(0, len(ids), 900)):  # SQL Server: 2,100 params
        for r in conn.execute(
            select(Err).where(Err.c.ExecutionID.in_(chunk)).order_by(Err.c.ExecutionErrorID)
        ):
            errors[int(r.ExecutionID)].append(ErrorNote(r.ErrorType, r.ErrorMessage, r.CreatedAt))
        for eid, kind, n in conn.execute(
            select(C.c.ExecutionID, C.c.CheckpointType, func.count())
            .where(C.c.ExecutionID.in_(chunk))
            .group_by(C.c.ExecutionID, C.c.CheckpointType)
        ):
            checkpoints[int(eid)][str(kind)] = int(n)
        for r in conn.execute(
            select(RC).where(RC.c.ExecutionID.in_(chunk)).order_by(RC.c.RowCountID)
        ):
            counts[int(r.ExecutionID)].append(
                RowCount(str(r.ObjectName), str(r.CountType), int(r.RecordCount))
            )
    return errors, checkpoints, counts


def _last(row: Any | None, counts: Counts) -> BatchSummary | None:
    return None if row is None else _summary(row, counts.get(int(row.ExecutionID)))


def _label(task_id: str, map_index: int | None) -> str:
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


# -- the views ---------------------------------------------------------------------------------


def batch_page(
    store: CatalogStore, dag_id: str, limit: int = 25, before: int | None = None
) -> BatchPage:
    """A DAG's batches, newest first, ``limit`` at a time (keyset pagination on ExecutionID:
    a page costs the same at any depth)."""
    limit = _page_size(limit)

    def work(conn: Connection) -> BatchPage:
        E, P = store.s.Execution, store.s.Package
        package_id = conn.execute(
            select(P.c.PackageID).where(P.c.DagId == dag_id, P.c.TaskId.is_(None))
        ).scalar()
        if package_id is None:
            return BatchPage([], None)
        query = select(E).where(E.c.PackageID == package_id)
        if before is not None:
            query = query.where(E.c.ExecutionID < before)
        rows = conn.execute(query.order_by(E.c.ExecutionID.desc()).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        counts = _counts(store, conn, [int(r.ExecutionID) for r in rows])
        batches = [_summary(r, counts.get(int(r.ExecutionID))) for r in rows]
        return BatchPage(batches, batches[-1].execution_id if more and batches else None)

    return store.transaction(work, "view batches")


def find_batch(store: CatalogStore, dag_id: str, run_id: str) -> int | None:
    """The batch execution of one DAG run (the latest, if the run was cleared and re-ran)."""

    def work(conn: Connection) -> int | None:
        E = store.s.Execution
        value = conn.execute(
            select(func.max(E.c.ExecutionID)).where(
                E.c.DagId == dag_id, E.c.RunId == run_id, E.c.TaskId.is_(None)
            )
        ).scalar()
        return None if value is None else int(value)

    return store.transaction(work, "view find batch")


def batch_dag_id(store: CatalogStore, execution_id: int) -> str | None:
    """The DAG a batch execution belongs to (what authorizing a read of it needs first)."""

    def work(conn: Connection) -> str | None:
        E = store.s.Execution
        row = conn.execute(
            select(E.c.DagId, E.c.TaskId).where(E.c.ExecutionID == execution_id)
        ).first()
        return None if row is None or row.TaskId is not None else str(row.DagId)

    return store.transaction(work, "view batch dag")


def batch_detail(store: CatalogStore, execution_id: int) -> BatchDetail | None:
    """One batch and every task row under it: instruction, decider, audit ID, errors,
    checkpoints, foreach progress, row counts. None if no such batch."""

    def work(conn: Connection) -> BatchDetail | None:
        E = store.s.Execution
        batch = conn.execute(
            select(E).where(E.c.ExecutionID == execution_id, E.c.TaskId.is_(None))
        ).first()
        if batch is None:
            return None
        rows = conn.execute(
            select(E)
            .where(E.c.ParentExecutionID == execution_id, E.c.TaskId.is_not(None))
            .order_by(E.c.ExecutionID)
            .limit(MAX_BATCH_TASKS + 1)
        ).all()
        truncated = len(rows) > MAX_BATCH_TASKS
        rows = rows[:MAX_BATCH_TASKS]
        ids = [int(r.ExecutionID) for r in rows]
        deciders = _deciders(store, conn, rows)
        errors, checkpoints, counts = _details(store, conn, [execution_id, *ids])
        tally: dict[str, int] = defaultdict(int)
        for r in rows:
            tally[str(r.ExecutionStatus)] += 1
        tasks = [
            _task_row(r, deciders[int(r.ExecutionID)], errors, checkpoints, counts) for r in rows
        ]
        return BatchDetail(
            batch=_summary(batch, tally),
            tasks=tasks,
            errors=errors.get(execution_id, []),
            truncated=truncated,
        )

    return store.transaction(work, "view batch")


def task_executions(
    store: CatalogStore,
    dag_id: str,
    task_id: str,
    *,
    map_index: int | None = None,
    limit: int = 50,
    before: int | None = None,
) -> tuple[list[TaskRow], dict[int, BatchSummary], int | None]:
    """A task's executions across attempts and runs, newest first (one item of a mapped task
    when ``map_index`` is given), with the batch of each and the next page's cursor."""
    limit = _page_size(limit)

    def work(conn: Connection) -> tuple[list[TaskRow], dict[int, BatchSummary], int | None]:
        E, P = store.s.Execution, store.s.Package
        package_id = conn.execute(
            select(P.c.PackageID).where(P.c.DagId == dag_id, P.c.TaskId == task_id)
        ).scalar()
        if package_id is None:
            return [], {}, None
        query = select(E).where(E.c.PackageID == package_id)
        if map_index is not None and map_index >= 0:
            query = query.where(E.c.MapIndex == map_index)
        if before is not None:
            query = query.where(E.c.ExecutionID < before)
        rows = conn.execute(query.order_by(E.c.ExecutionID.desc()).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        deciders = _deciders(store, conn, rows)
        errors, checkpoints, counts = _details(store, conn, [int(r.ExecutionID) for r in rows])
        parents = sorted({int(r.ParentExecutionID) for r in rows if r.ParentExecutionID})
        batches = {
            int(b.ExecutionID): _summary(b)
            for b in (
                conn.execute(select(E).where(E.c.ExecutionID.in_(parents))).all() if parents else []
            )
        }
        tasks = [
            _task_row(r, deciders[int(r.ExecutionID)], errors, checkpoints, counts) for r in rows
        ]
        return tasks, batches, tasks[-1].execution_id if more and tasks else None

    return store.transaction(work, "view task")


def timeline(store: CatalogStore, dag_id: str, lineage_id: int) -> Timeline | None:
    """The lineage ``lineage_id`` of ``dag_id`` as a grid of attempts x tasks (None if the
    lineage is not this DAG's)."""

    def work(conn: Connection) -> Timeline | None:
        E = store.s.Execution
        rows = conn.execute(
            select(E).where(E.c.LineageID == lineage_id).order_by(E.c.ExecutionID)
        ).all()
        batches = [r for r in rows if r.TaskId is None]
        if not batches or any(str(b.DagId) != dag_id for b in batches):
            return None
        counts = _counts(store, conn, [int(b.ExecutionID) for b in batches])
        attempts = [_summary(b, counts.get(int(b.ExecutionID))) for b in batches]
        # A task row's own AttemptNumber counts that task's attempts; the column is the
        # attempt of the batch it ran under.
        column = {int(b.ExecutionID): int(b.AttemptNumber) for b in batches}
        grid: dict[str, dict[int, TimelineCell]] = {}
        for r in rows:
            if r.TaskId is None or r.ParentExecutionID not in column:
                continue
            cells = grid.setdefault(_label(str(r.TaskId), r.MapIndex), {})
            # The latest execution of the task in an attempt is its cell (a retried try
            # leaves two rows in one batch).
            cells[column[r.ParentExecutionID]] = TimelineCell(
                int(r.ExecutionID), str(r.ExecutionStatus), str(r.NextLoadStatus)
            )
        labels = sorted(grid)
        shown = labels[:MAX_TIMELINE_TASKS]
        return Timeline(
            lineage_id=lineage_id,
            attempts=attempts,
            tasks=[(label, grid[label]) for label in shown],
            hidden_tasks=len(labels) - len(shown),
        )

    return store.transaction(work, "view timeline")


def routed_dag_ids(store: CatalogStore) -> list[str]:
    """Every DAG the catalog has a batch package of, sorted (one row per DAG)."""

    def work(conn: Connection) -> list[str]:
        P = store.s.Package
        return [
            str(d)
            for (d,) in conn.execute(
                select(P.c.DagId).where(P.c.TaskId.is_(None)).order_by(P.c.DagId)
            )
        ]

    return store.transaction(work, "view dag ids")


def page_of(dag_ids: Sequence[str], limit: int, after: str | None) -> tuple[list[str], str | None]:
    """One page of sorted DAG ids after the cursor ``after``, and the next page's cursor."""
    limit = _page_size(limit)
    rest = [d for d in sorted(dag_ids) if after is None or d > after]
    page = rest[:limit]
    return page, page[-1] if len(rest) > limit else None


def overview(store: CatalogStore, dag_ids: Collection[str] | None = None) -> list[DagOverview]:
    """Every DAG in the catalog (or those of ``dag_ids``: the ones the user may read), with its
    last batch and the tasks its next run restarts (R, or D with the audit ID it reuses)."""

    def work(conn: Connection) -> list[DagOverview]:
        E, P = store.s.Execution, store.s.Package
        query = select(P.c.PackageID, P.c.DagId, P.c.IsEnabled).where(P.c.TaskId.is_(None))
        if dag_ids is not None:
            if not dag_ids:
                return []
            query = query.where(P.c.DagId.in_(sorted(dag_ids)))
        packages = conn.execute(query.order_by(P.c.DagId)).all()
        if not packages:
            return []
        latest_ids = [
            int(i)
            for (i,) in conn.execute(
                select(func.max(E.c.ExecutionID))
                .where(E.c.PackageID.in_([p.PackageID for p in packages]))
                .group_by(E.c.PackageID)
            )
        ]
        latest = {
            int(r.PackageID): r
            for r in (
                conn.execute(select(E).where(E.c.ExecutionID.in_(latest_ids))).all()
                if latest_ids
                else []
            )
        }
        counts = _counts(store, conn, latest_ids)
        # What waits: in each lineage that did not close with a success, the latest deciding
        # row of every task and item, when its instruction restarts it.
        open_lineages = {
            r.LineageID
            for r in latest.values()
            if r.ExecutionStatus != ExecutionStatus.SUCCEEDED.value and r.LineageID is not None
        }
        waiting: dict[str, list[TaskRow]] = defaultdict(list)
        if open_lineages:
            newest: dict[tuple[Any, Any, str], Any] = {}
            for r in conn.execute(
                select(E)
                .where(E.c.LineageID.in_(open_lineages), E.c.TaskId.is_not(None), decides(E))
                .order_by(E.c.ExecutionID)
            ):
                newest[(r.LineageID, r.PackageID, r.ItemFingerprint or "")] = r
            for r in newest.values():
                if r.NextLoadStatus in RESTART:
                    waiting[str(r.DagId)].append(_task_row(r, None))
        return [
            DagOverview(
                dag_id=str(p.DagId),
                enabled=bool(p.IsEnabled),
                last_batch=_last(latest.get(int(p.PackageID)), counts),
                waiting=sorted(waiting.get(str(p.DagId), []), key=lambda t: t.execution_id),
            )
            for p in packages
        ]

    return store.transaction(work, "view overview")
