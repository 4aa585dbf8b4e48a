"""The cluster policy (entry point ``airflow.policy``): route opted-in DAGs at parse time.

Airflow calls ``dag_policy`` for every DAG it bags, in every process that parses DAG files (the
DAG processor, each task process, ``dags test``); the scheduler works from the serialized DAG and
never calls it. A DAG is routed when it is tagged ``bfx``, was passed to ``route_dag()``, or
``[bfx] route_all_dags = True``. Any other DAG is left exactly as it was.

A policy that raises makes the DAG an import error, so this one never raises: a failure to route
is logged and the DAG stays unrouted (it runs as plain Airflow).

Importing this module (Airflow does, when it loads policy plugins) also makes ``bfx`` a known
context key, so that ``@task def load(table, bfx): ...`` parses without a default for ``bfx``
(decision 0046).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.policies import hookimpl

from airflow_provider_bfx.routing.install import route_tasks
from airflow_provider_bfx.routing.settings import BfxSettingsError, dag_routing, route_all_dags

log = logging.getLogger("airflow_provider_bfx.routing")

ROUTING_TAG = "bfx"


def _allow_bfx_argument() -> None:
    try:
        from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS
    except ImportError:  # pragma: no cover - another Task SDK layout: document bfx=None instead
        return
    KNOWN_CONTEXT_KEYS.add("bfx")


_allow_bfx_argument()


def is_routed(dag: Any) -> bool:
    """Opt-in: the tag ``bfx``, a ``route_dag()`` call, or ``[bfx] route_all_dags``."""
    if ROUTING_TAG in (getattr(dag, "tags", None) or ()):
        return True
    if dag_routing(dag) is not None:
        return True
    try:
        return route_all_dags()
    except BfxSettingsError as exc:
        log.error("bfx: %s; only DAGs tagged bfx or passed to route_dag() are routed", exc)
        return False


@hookimpl
def dag_policy(dag: Any) -> None:
    try:
        if is_routed(dag):
            route_tasks(dag)
    except Exception:
        log.exception("bfx: could not route DAG %s; it runs unrouted", getattr(dag, "dag_id", "?"))
