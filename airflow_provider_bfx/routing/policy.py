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
import sys
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

#: ``airflow`` commands whose process forks task processes: the scheduler (its LocalExecutor
#: workers fork each task) and a Celery worker (its pool forks them).
_FORKING_COMMANDS = (("scheduler",), ("celery", "worker"))


def _forks_task_processes(argv: list[str]) -> bool:
    args = [a for a in argv[1:] if not a.startswith("-")]
    return any(tuple(args[: len(cmd)]) == cmd for cmd in _FORKING_COMMANDS)


def _preload_task_side(argv: list[str]) -> bool:
    """In a process that forks task processes, import the modules a routed task needs (the
    gate, the task end, the catalog core and its hook) once, so that every forked task
    inherits them instead of importing them again: about a tenth of a second of CPU per task
    (issue 12, decision 0107), and builds the catalog's statements for the dialects it may meet
    (:mod:`airflow_provider_bfx.catalog.warm`, decision 0110). Neither connects to anything,
    reads a connection or logs a line. Any other process (API server, DAG processor,
    triggerer, the CLI) is left alone."""
    if not _forks_task_processes(argv):
        return False
    try:
        import airflow_provider_bfx.hooks.catalog  # noqa: F401
        import airflow_provider_bfx.routing.ending  # noqa: F401
        import airflow_provider_bfx.routing.gate  # noqa: F401
        from airflow_provider_bfx.catalog.warm import warm

        warm()
    except Exception:  # never break the scheduler: the task imports and builds them itself
        log.debug("bfx: preloading the routing modules failed", exc_info=True)
        return False
    return True


_preload_task_side(sys.argv)


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
