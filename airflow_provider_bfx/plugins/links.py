"""The operator extra link "Recovery" that the routing adds to every routed task.

Airflow 3 computes an operator's links in the task process when the try ends and keeps them as
XComs (``_link_RecoveryLink``); the API server only reads them back, so this class needs no
registration in the plugin and costs the API server nothing. The link opens the task's
"Recovery" tab in that run (the task-instance view of the plugin).

A try computes the links of the operator it runs. For a mapped task that is not the operator the
routing gave the link to: Airflow's ``MappedOperator.unmap`` builds a fresh operator from its
class (``operator_class(**partial_kwargs, **mapped_kwargs)``), whose links are the class's own.
:func:`carry_recovery_link` gives it the link back; the gate calls it first thing in each try.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from airflow_provider_bfx.plugins.routes import TASK_ROUTE
from airflow_provider_bfx.routing.marks import is_mapped


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


def has_recovery_link(task: Any) -> bool:
    return any(isinstance(link, RecoveryLink) for link in _links(task))


def add_recovery_link(task: Any) -> None:
    """The link on ``task``, once (the routing, at parse time)."""
    if not has_recovery_link(task):
        task.operator_extra_links = (*_links(task), RecoveryLink())


def carry_recovery_link(parse_task: Any, task: Any) -> None:
    """Give ``task``, the operator a try runs, the link of its parse-time task ``parse_task``
    when that is a mapped operator the routing gave the link to (``MappedOperator.unmap`` does
    not carry it). Whether the link is wanted was decided once, at parse time, by the routing
    (``[bfx] recovery_link``): this copies that decision, it does not make it again."""
    if task is not parse_task and is_mapped(parse_task) and has_recovery_link(parse_task):
        add_recovery_link(task)


def _links(task: Any) -> tuple[Any, ...]:
    return tuple(getattr(task, "operator_extra_links", ()) or ())
