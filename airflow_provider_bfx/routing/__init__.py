"""Route Airflow tasks through the catalog: ``route_dag``, the cluster policy, the gate.

Opt in one of three ways: tag the DAG ``bfx``; call :func:`route_dag` in the DAG file; or set
``[bfx] route_all_dags = True``. The cluster policy (entry point ``airflow.policy``) does the
rest at parse time, so any operator is routed without changing its code.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from airflow_provider_bfx.catalog.codes import VersionMismatchPolicy
from airflow_provider_bfx.catalog.machine import ResumeScope
from airflow_provider_bfx.routing.settings import (
    DAG_ROUTING_ATTR,
    make_dag_routing,
)

__all__ = ["route_dag"]

log = logging.getLogger("airflow_provider_bfx.routing")

D = TypeVar("D")


def route_dag(
    dag: D,
    catalog_conn_id: str | None = None,
    version_mismatch_policy: VersionMismatchPolicy | str | None = None,
    retry_limit: int | None = None,
    resume_scope: ResumeScope | str | None = None,
) -> D:
    """Route every task of ``dag`` through the catalog, with optional per-DAG settings.

    :param catalog_conn_id: this DAG's catalog connection instead of ``[bfx] catalog_conn_id``.
    :param version_mismatch_policy: ``WARN``, ``RERUN`` or ``FAIL`` for this DAG.
    :param retry_limit: resumed attempts of one lineage before the next run starts fresh; for
        this DAG it overrides the catalog's ``Package.RetryLimit``.
    :param resume_scope: ``lineage`` or ``logical_date`` for this DAG.

    Call it after the tasks are defined (typically at the end of the DAG file). Invalid
    arguments raise ``ValueError`` at parse time. Returns ``dag``. Also adds the tag ``bfx``, so
    that the UI shows which DAGs are routed.
    """
    routing = make_dag_routing(
        catalog_conn_id=catalog_conn_id,
        version_mismatch_policy=version_mismatch_policy,
        retry_limit=retry_limit,
        resume_scope=resume_scope,
    )
    setattr(dag, DAG_ROUTING_ATTR, routing)
    from airflow_provider_bfx.routing.install import route_tasks
    from airflow_provider_bfx.routing.policy import ROUTING_TAG

    tags: Any = getattr(dag, "tags", None)
    if isinstance(tags, set):
        tags.add(ROUTING_TAG)
    elif isinstance(tags, list) and ROUTING_TAG not in tags:
        tags.append(ROUTING_TAG)
    route_tasks(dag)
    return dag
