"""The operator extra link "Recovery" that the routing adds to every routed task.

Airflow 3 computes an operator's links in the task process when the try ends and keeps them as
XComs (``_link_RecoveryLink``); the API server only reads them back, so this class needs no
registration in the plugin and costs the API server nothing. The link opens the task's
"Recovery" tab in that run (the task-instance view of the plugin).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from airflow_provider_bfx.plugins.routes import TASK_ROUTE


def recovery_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    q = lambda v: quote(v, safe="")  # noqa: E731
    path = f"/dags/{q(dag_id)}/runs/{q(run_id)}/tasks/{q(task_id)}"
    if map_index >= 0:
        path += f"/mapped/{map_index}"
    return f"{path}/plugin/{TASK_ROUTE}"


class RecoveryLink(BaseOperatorLink):
    """ "Recovery": the task's lineage across attempts and runs, in the Airflow UI."""

    name = "Recovery"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow_provider_bfx.routing.settings import airflow_conf

        base = ""
        try:
            base = (airflow_conf().get("api", "base_url", fallback="") or "").rstrip("/")
        except Exception:  # noqa: BLE001 - no [api] base_url: a path on the same host
            base = ""
        return base + recovery_path(
            ti_key.dag_id, ti_key.run_id, ti_key.task_id, int(getattr(ti_key, "map_index", -1))
        )
