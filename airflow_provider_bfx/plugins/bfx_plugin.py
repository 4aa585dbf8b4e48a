"""``BfxPlugin``: what the provider plugs into Airflow (entry point ``airflow.plugins``).

* The recovery view (DESIGN.md §7 "UI"): a FastAPI app mounted by the API server at ``/bfx``
  (JSON API under ``/bfx/api/v1``, pages under ``/bfx/ui``), shown in Airflow's UI as a
  "Recovery" nav entry and a "Recovery" tab on DAGs, DAG runs and task instances. Only the API
  server builds the app; it is created lazily so no other component imports FastAPI routes.
* It registers no listener on purpose (docs/decisions/0080): with any plugin listener
  registered, Airflow refuses every DAG holding an ``end_from_trigger=True`` task, routed or
  not, and a listener runs inside the scheduler loop. Batches end through the DAG callbacks the
  policy installs on routed DAGs (:mod:`airflow_provider_bfx.routing.batch_end`).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_bfx.plugins.routes import DAG_ROUTE, NAV_ROUTE, RUN_ROUTE, TASK_ROUTE

URL_PREFIX = "/bfx"


class _LazyApp:
    """The ASGI app, built on its first request: only the API server ever calls it."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_provider_bfx.plugins.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


_VIEWS = [
    ("nav", NAV_ROUTE, "/bfx/ui/recovery"),
    ("dag", DAG_ROUTE, "/bfx/ui/dags/{DAG_ID}"),
    ("dag_run", RUN_ROUTE, "/bfx/ui/dags/{DAG_ID}/runs/{RUN_ID}"),
    (
        "task_instance",
        TASK_ROUTE,
        "/bfx/ui/dags/{DAG_ID}/runs/{RUN_ID}/tasks/{TASK_ID}?map_index={MAP_INDEX}",
    ),
]


class BfxPlugin(AirflowPlugin):
    name = "bfx"
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "bfx recovery"}]
    external_views = [
        {
            "name": "Recovery",
            "href": href,
            "destination": destination,
            "url_route": route,
            "category": "browse" if destination == "nav" else None,
        }
        for destination, route, href in _VIEWS
    ]
