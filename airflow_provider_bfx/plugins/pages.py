"""The recovery view's pages: server-rendered HTML under ``/bfx/ui`` (decision 0097).

Airflow shows each page in an iframe (its ``external_views``: nav "Recovery", and a "Recovery"
tab on a DAG, a DAG run and a task instance). Pages are rendered on the server from the same
functions as the JSON API (:mod:`.api`), with the same authorization: no build step, no
JavaScript bundle to keep in step with Airflow's React version, and a page is one request. The
only script follows Airflow's light/dark theme and posts a confirmed reset to the JSON API.
Links to another view open it in Airflow (``target=_top``), where it is a tab again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from airflow_provider_bfx.catalog import operations, views
from airflow_provider_bfx.catalog.codes import ExecutionStatus, NextLoadStatus
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.plugins.access import CurrentUser, may_access_dag, require_dag
from airflow_provider_bfx.plugins.api import catalog_store, overview_page, plan_of, plan_out
from airflow_provider_bfx.plugins.routes import DAG_ROUTE, RUN_ROUTE, TASK_ROUTE
from airflow_provider_bfx.resume_in_place import InPlaceResume, ResumeRefused, resume_failed_run

router = APIRouter(prefix="/ui", include_in_schema=False)


_env = Environment(
    loader=FileSystemLoader(str(Path(__file__).with_name("templates"))),
    autoescape=select_autoescape(["html"]),
)

CODE_NAMES = {
    **{s.value: f"{s.name.lower().replace('_', ' ')} ({s.value})" for s in ExecutionStatus},
    **{
        f"{n.value}": f"next: {n.name.lower().replace('_', ' ')} ({n.value})"
        for n in NextLoadStatus
        if n.value not in {s.value for s in ExecutionStatus}
    },
}


_env.globals["code_names"] = CODE_NAMES


def _q(value: str) -> str:
    return quote(value, safe="")


class Links:
    """Where each view lives in Airflow's UI (a tab of a DAG, a run, a task instance)."""

    def __init__(self, dag_id: str | None = None) -> None:
        self.dag_id = dag_id

    def dag(self, dag_id: str) -> str:
        return f"/dags/{_q(dag_id)}/plugin/{DAG_ROUTE}"

    def run(self, *args: str) -> str:
        dag_id, run_id = args if len(args) == 2 else (self.dag_id or "", args[0])
        return f"/dags/{_q(dag_id)}/runs/{_q(run_id)}/plugin/{RUN_ROUTE}"

    def task(self, task_id: str, map_index: int | None = None, run_id: str | None = None) -> str:
        base = f"/dags/{_q(self.dag_id or '')}"
        if run_id:
            base += f"/runs/{_q(run_id)}"
        path = f"{base}/tasks/{_q(task_id)}"
        if map_index is not None and map_index >= 0:
            path += f"/mapped/{map_index}"
        return f"{path}/plugin/{TASK_ROUTE}"


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status)


def error_page(status: int, message: str) -> HTMLResponse:
    return render(
        "error.html",
        status,
        title="error",
        page="error",
        code=status,
        message=message,
        login="/auth/login",
    )


def _catalog_label() -> str:
    from airflow_provider_bfx.routing.settings import load_settings

    return f"connection {load_settings().catalog_conn_id!r}"


@router.get("/recovery", response_class=HTMLResponse)
def recovery_page(user: CurrentUser, after: str | None = Query(None)) -> HTMLResponse:
    rows, total, cursor = overview_page(user, 100, after)
    return render(
        "recovery.html",
        title="Recovery",
        page="recovery",
        rows=rows,
        total=total,
        next_after=cursor,
        links=Links(),
        catalog=_catalog_label(),
    )


@router.get("/dags/{dag_id}", response_class=HTMLResponse)
def dag_page(dag_id: str, user: CurrentUser, before: int | None = Query(None)) -> HTMLResponse:
    require_dag(user, dag_id, "GET")
    store = catalog_store()
    plan = plan_of(dag_id)
    page = views.batch_page(store, dag_id, 25, before)
    lineage_id = page.batches[0].lineage_id if page.batches and before is None else None
    lineage = views.timeline(store, dag_id, lineage_id) if lineage_id is not None else None
    can_edit = may_access_dag(user, dag_id, "PUT")
    previews: dict[str | None, str] = {None: operations.reset_preview(plan)}
    for t in plan.tasks:
        previews.setdefault(t.task_id, operations.reset_preview(plan, t.task_id))
    return render(
        "dag.html",
        title=dag_id,
        page="dag",
        dag_id=dag_id,
        plan=plan_out(plan),
        batches=page,
        lineage=lineage,
        lineage_id=lineage_id,
        links=Links(dag_id),
        previews=previews,
        can_edit=can_edit,
        api_reset=f"/bfx/api/v1/dags/{_q(dag_id)}/reset",
        resume=_resume_offer(store, dag_id) if can_edit and before is None else None,
        api_resume=f"/bfx/api/v1/dags/{_q(dag_id)}/resume",
    )


def _resume_offer(store: CatalogStore, dag_id: str) -> InPlaceResume | None:
    """The resume-in-place button of the DAG page: offered when the DAG's latest batch failed
    and Airflow has failed task instances to clear in its run (a dry run, nothing changes)."""
    try:
        return resume_failed_run(store, dag_id, dry_run=True)
    except ResumeRefused:
        return None


@router.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse)
def run_page(dag_id: str, run_id: str, user: CurrentUser) -> HTMLResponse:
    require_dag(user, dag_id, "GET")
    store = catalog_store()
    batch_id = views.find_batch(store, dag_id, run_id)
    detail = views.batch_detail(store, batch_id) if batch_id is not None else None
    lineage = None
    if detail is not None and detail.batch.lineage_id is not None:
        lineage = views.timeline(store, dag_id, detail.batch.lineage_id)
    links = Links(dag_id)
    return render(
        "run.html",
        title=f"{dag_id} {run_id}",
        page="run",
        dag_id=dag_id,
        run_id=run_id,
        detail=detail,
        lineage=lineage,
        links=_RunLinks(dag_id, run_id) if detail else links,
    )


class _RunLinks(Links):
    """Links of a run page: a task opens its task-instance tab in this run."""

    def __init__(self, dag_id: str, run_id: str) -> None:
        super().__init__(dag_id)
        self.run_id = run_id

    def task(self, task_id: str, map_index: int | None = None, run_id: str | None = None) -> str:
        return super().task(task_id, map_index, run_id or self.run_id)


@router.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", response_class=HTMLResponse)
def task_page(
    dag_id: str,
    run_id: str,
    task_id: str,
    user: CurrentUser,
    map_index: str | None = Query(None, description="an integer; anything else: every item"),
    before: int | None = Query(None),
) -> HTMLResponse:
    require_dag(user, dag_id, "GET")
    # Airflow leaves the ``{MAP_INDEX}`` placeholder of the view's URL as it is on the page of
    # an unmapped task instance: read anything but an integer as "not mapped".
    index = int(map_index) if map_index and map_index.lstrip("-").isdigit() else None
    rows, batches, cursor = views.task_executions(
        catalog_store(), dag_id, task_id, map_index=index, limit=50, before=before
    )
    return render(
        "task.html",
        title=f"{dag_id} {task_id}",
        page="task",
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=index,
        rows=rows,
        batches=batches,
        next_before=cursor,
        links=Links(dag_id),
    )
