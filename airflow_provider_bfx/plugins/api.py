"""The recovery view's JSON API: ``/bfx/api/v1`` (DESIGN.md §7 "UI").

Every handler is a plain ``def``: FastAPI runs it in its thread pool, so a catalog read (or a
slow catalog) never blocks the API server's event loop. Each reads through the same store and
connection resolution as the tasks (``routing.catalog.get_store`` on ``[bfx] catalog_conn_id``)
and the functions of ``catalog/views.py`` and ``catalog/operations.py`` (``bfx plan`` and ``bfx
reset`` answer the same). Authorization first, then the catalog: a user who may not read a DAG
learns nothing of it, not even whether the catalog knows it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import BaseModel, Field

from airflow_provider_bfx.audit import record_action
from airflow_provider_bfx.catalog import operations, views
from airflow_provider_bfx.catalog.machine import ResumeScope
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.plugins.access import CurrentUser, record_reset, require_dag, user_name
from airflow_provider_bfx.resume_in_place import ResumeRefused, resume_failed_run

router = APIRouter(prefix="/api/v1", tags=["bfx recovery"])


def catalog_store() -> CatalogStore:
    """The deployment's catalog (``[bfx] catalog_conn_id``), resolved as the tasks resolve it."""
    from airflow_provider_bfx.routing.catalog import get_store
    from airflow_provider_bfx.routing.settings import load_settings

    return get_store(load_settings().catalog_conn_id)


def dag_task_ids(dag_id: str) -> list[str]:
    """The DAG's task ids as Airflow serialized it (empty if Airflow does not know the DAG)."""
    from airflow.models.serialized_dag import SerializedDagModel

    dag = SerializedDagModel.get_dag(dag_id)
    return list(dag.task_ids) if dag is not None else []


def plan_of(dag_id: str) -> operations.Plan:
    """``bfx plan`` of the DAG, over every task Airflow knows of it."""
    return operations.plan(
        catalog_store(), dag_id, resume_scope=resume_scope(), task_ids=dag_task_ids(dag_id)
    )


def resume_scope() -> ResumeScope:
    from airflow_provider_bfx.routing.settings import load_settings

    return load_settings().resume_scope


# -- response models (the OpenAPI schema documents them) ---------------------------------------


class PlannedTaskOut(BaseModel):
    task_id: str
    map_index: int | None
    item_fingerprint: str
    action: str = Field(description="skip, retry, compute-only restart, run, refused ...")
    execution_status: str = Field(description="the ExecutionStatus its start will write")
    reason: str
    decided_by_execution_id: int | None
    original_execution_id: int | None
    audit_id: int | None = Field(description="for a compute-only restart: the landed audit ID")
    adopted: str | None = Field(description="BFX_ADOPTED_AIRFLOW_STATE note of the deciding row")


class PlanOut(BaseModel):
    dag_id: str
    known: bool = Field(description="the DAG has run under the catalog before")
    resumes: bool
    lineage_id: int | None
    attempt: int
    batch_status: str | None
    reason: str
    reconcile: str | None
    totals: dict[str, int]
    tasks: list[PlannedTaskOut]


class BatchOut(BaseModel):
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
    task_counts: dict[str, int]


class BatchPageOut(BaseModel):
    batches: list[BatchOut]
    next_before: int | None = Field(description="pass as ?before= for the next, older page")


class ErrorOut(BaseModel):
    error_type: str | None
    message: str | None
    created_at: datetime | None


class RowCountOut(BaseModel):
    object_name: str
    count_type: str
    rows: int


class TaskRowOut(BaseModel):
    execution_id: int
    task_id: str
    map_index: int | None
    item_fingerprint: str
    try_number: int | None
    status: str = Field(description="ExecutionStatus")
    next_load_status: str = Field(description="NextLoadStatus")
    attempt: int
    lineage_id: int | None
    original_execution_id: int | None
    parent_execution_id: int | None
    decided_by: int | None = Field(
        description="the execution whose instruction this start followed (for a skip: reused)"
    )
    audit_id: int | None
    lease_owner: str | None
    start_time: datetime
    end_time: datetime | None
    errors: list[ErrorOut]
    checkpoints: dict[str, int]
    foreach_done: int | None
    row_counts: list[RowCountOut]


class BatchDetailOut(BaseModel):
    batch: BatchOut
    tasks: list[TaskRowOut]
    errors: list[ErrorOut]
    truncated: bool


class TaskHistoryOut(BaseModel):
    dag_id: str
    task_id: str
    executions: list[TaskRowOut]
    batches: dict[int, BatchOut]
    next_before: int | None


class TimelineCellOut(BaseModel):
    execution_id: int
    status: str
    next_load_status: str


class TimelineRowOut(BaseModel):
    task: str
    cells: dict[int, TimelineCellOut] = Field(description="by attempt number")


class TimelineOut(BaseModel):
    lineage_id: int
    attempts: list[BatchOut]
    tasks: list[TimelineRowOut]
    hidden_tasks: int


class DagOverviewOut(BaseModel):
    dag_id: str
    enabled: bool
    last_batch: BatchOut | None
    waiting: list[TaskRowOut]


class ResetIn(BaseModel):
    task_id: str | None = Field(default=None, description="reset only this task")


#: The reset body is optional: no body (or ``{}``) resets the whole DAG.
OptionalResetBody = Annotated[ResetIn | None, Body()]


class ResetOut(BaseModel):
    dag_id: str
    task_id: str | None
    changed_rows: int
    discarded_checkpoints: int
    message: str
    recorded_in: str = "Airflow audit log (event bfx.reset)"


class ResumeIn(BaseModel):
    run_id: str | None = Field(
        default=None, description="the failed run (default: the run of the DAG's latest batch)"
    )
    dry_run: bool = Field(default=False, description="say what would be cleared, clear nothing")


OptionalResumeBody = Annotated[ResumeIn | None, Body()]


class ResumeOut(BaseModel):
    dag_id: str
    run_id: str
    batch_execution_id: int
    cleared: list[str]
    dry_run: bool
    message: str
    recorded_in: str = "Airflow audit log (event bfx.resume)"


class RecoverOut(BaseModel):
    closed: int
    log_lines: list[str]


def _out(model: type[BaseModel], value: Any) -> Any:
    return model.model_validate(dataclasses.asdict(value))


def plan_out(p: operations.Plan) -> PlanOut:
    totals: dict[str, int] = {}
    for t in p.tasks:
        totals[t.action] = totals.get(t.action, 0) + 1
    return PlanOut(
        dag_id=p.dag_id,
        known=p.known,
        resumes=p.resumes,
        lineage_id=p.lineage_id,
        attempt=p.attempt,
        batch_status=p.batch_status.value if p.batch_status else None,
        reason=p.reason,
        reconcile=p.reconcile,
        totals=dict(sorted(totals.items())),
        tasks=[
            PlannedTaskOut(
                task_id=t.task_id,
                map_index=t.map_index,
                item_fingerprint=t.item_fingerprint,
                action=t.action,
                execution_status=t.status.value,
                reason=t.reason,
                decided_by_execution_id=t.prior_execution_id,
                original_execution_id=t.original_execution_id,
                audit_id=t.audit_id,
                adopted=t.adopted,
            )
            for t in p.tasks
        ],
    )


# -- routes -------------------------------------------------------------------------------------


class OverviewOut(BaseModel):
    dags: list[DagOverviewOut]
    total: int = Field(description="routed DAGs the user may read")
    next_after: str | None = Field(description="pass as ?after= for the next page")


def overview_page(user: Any, limit: int, after: str | None) -> tuple[list[Any], int, str | None]:
    """One page (by DAG id) of the routed DAGs the user may read, with their overview."""
    from airflow_provider_bfx.plugins.access import readable_dag_ids

    store = catalog_store()
    allowed = sorted(readable_dag_ids(user, views.routed_dag_ids(store)))
    page, cursor = views.page_of(allowed, limit, after)
    return views.overview(store, page), len(allowed), cursor


@router.get("/overview", response_model=OverviewOut)
def get_overview(
    user: CurrentUser,
    limit: int = Query(100, ge=1, le=views.MAX_PAGE),
    after: str | None = Query(None, description="DAG id cursor: DAGs after it"),
) -> Any:
    """The routed DAGs the user may read (a page by DAG id): each one's last batch and the
    tasks waiting for a restart (R, or D with the audit ID it will reuse)."""
    rows, total, cursor = overview_page(user, limit, after)
    return OverviewOut(dags=[_out(DagOverviewOut, o) for o in rows], total=total, next_after=cursor)


@router.get("/dags/{dag_id}/plan", response_model=PlanOut)
def get_plan(dag_id: str, user: CurrentUser) -> Any:
    """What the next run of the DAG will do, task by task, and why (as ``bfx plan``)."""
    require_dag(user, dag_id, "GET")
    return plan_out(plan_of(dag_id))


@router.get("/dags/{dag_id}/batches", response_model=BatchPageOut)
def get_batches(
    dag_id: str,
    user: CurrentUser,
    limit: int = Query(25, ge=1, le=views.MAX_PAGE),
    before: int | None = Query(None, description="ExecutionID cursor: batches older than it"),
) -> Any:
    """The DAG's batches, newest first, with lineage, attempt and status counts (paginated)."""
    require_dag(user, dag_id, "GET")
    return _out(BatchPageOut, views.batch_page(catalog_store(), dag_id, limit, before))


@router.get("/dags/{dag_id}/tasks/{task_id}/executions", response_model=TaskHistoryOut)
def get_task_executions(
    dag_id: str,
    task_id: str,
    user: CurrentUser,
    map_index: int | None = None,
    limit: int = Query(50, ge=1, le=views.MAX_PAGE),
    before: int | None = None,
) -> Any:
    """A task's executions across attempts and runs, newest first (paginated)."""
    require_dag(user, dag_id, "GET")
    rows, batches, cursor = views.task_executions(
        catalog_store(), dag_id, task_id, map_index=map_index, limit=limit, before=before
    )
    return TaskHistoryOut(
        dag_id=dag_id,
        task_id=task_id,
        executions=[_out(TaskRowOut, r) for r in rows],
        batches={k: _out(BatchOut, b) for k, b in batches.items()},
        next_before=cursor,
    )


@router.get("/dags/{dag_id}/lineages/{lineage_id}", response_model=TimelineOut)
def get_timeline(dag_id: str, lineage_id: int, user: CurrentUser) -> Any:
    """A lineage as attempts x tasks: each task's status in each attempt."""
    require_dag(user, dag_id, "GET")
    t = views.timeline(catalog_store(), dag_id, lineage_id)
    if t is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no lineage {lineage_id} of {dag_id!r}")
    return TimelineOut(
        lineage_id=t.lineage_id,
        attempts=[_out(BatchOut, a) for a in t.attempts],
        tasks=[
            TimelineRowOut(
                task=label, cells={k: _out(TimelineCellOut, c) for k, c in cells.items()}
            )
            for label, cells in t.tasks
        ],
        hidden_tasks=t.hidden_tasks,
    )


@router.get("/batches/{execution_id}", response_model=BatchDetailOut)
def get_batch(execution_id: int, user: CurrentUser) -> Any:
    """Every task row of one batch: status, instruction, decider, audit ID, errors,
    checkpoints, foreach progress, row counts."""
    store = catalog_store()
    dag_id = views.batch_dag_id(store, execution_id)
    # Authorize on the batch's DAG before saying anything of it; an unknown batch is judged
    # as "every DAG", so a user without global read cannot probe which ids exist.
    require_dag(user, dag_id, "GET")
    detail = views.batch_detail(store, execution_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no batch execution {execution_id}")
    return _out(BatchDetailOut, detail)


@router.post("/dags/{dag_id}/reset", response_model=ResetOut)
def post_reset(dag_id: str, user: CurrentUser, body: OptionalResetBody = None) -> Any:
    """Force a fresh start of the DAG's next run, or of one task in it (as ``bfx reset``)."""
    require_dag(user, dag_id, "PUT")
    task_id = body.task_id if body else None
    try:
        result = operations.reset(catalog_store(), dag_id, task_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except RuntimeError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    out = ResetOut(
        dag_id=dag_id,
        task_id=task_id,
        changed_rows=result.changed_rows,
        discarded_checkpoints=result.discarded_checkpoints,
        message=result.message,
    )
    record_reset(user, dag_id, task_id, out.model_dump(exclude={"recorded_in"}))
    return out


@router.post("/dags/{dag_id}/resume", response_model=ResumeOut)
def post_resume(dag_id: str, user: CurrentUser, body: OptionalResumeBody = None) -> Any:
    """Resume the DAG's failed run in place (as ``bfx resume``): Airflow clears its failed and
    upstream_failed task instances; the tasks that succeeded start nothing (decision 0102)."""
    require_dag(user, dag_id, "PUT")
    request = body or ResumeIn()
    try:
        result = resume_failed_run(catalog_store(), dag_id, request.run_id, dry_run=request.dry_run)
    except ResumeRefused as exc:
        code = status.HTTP_404_NOT_FOUND if exc.not_found else status.HTTP_409_CONFLICT
        raise HTTPException(code, str(exc)) from exc
    out = ResumeOut(
        dag_id=dag_id,
        run_id=result.run_id,
        batch_execution_id=result.batch_execution_id,
        cleared=result.cleared,
        dry_run=result.dry_run,
        message=result.message,
    )
    if not result.dry_run:
        record_action("bfx.resume", user_name(user), dag_id, None, out.model_dump())
    return out


@router.post("/recover", response_model=RecoverOut)
def post_recover(user: CurrentUser) -> Any:
    """The expiry scan (``bfx recover``): close executions whose lease expired."""
    require_dag(user, None, "PUT")
    expired = catalog_store().expire_leases()
    return RecoverOut(closed=len(expired), log_lines=[e.log_line for e in expired])
