"""Nesting: a routed ``TriggerDagRunOperator`` hands its execution to the run it triggers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from airflow_provider_bfx.routing.run_conf import PARENT_KEY

log = logging.getLogger("airflow_provider_bfx.routing")

_TRIGGER_MODULE = "airflow.providers.standard.operators.trigger_dagrun"


def nest_triggered_run(task: Any, execution_id: int) -> None:
    """A routed ``TriggerDagRunOperator`` about to run: its rendered ``conf`` gets
    ``{"bfx": {"parent_execution_id": execution_id}}`` (merged, the user's keys kept), so that
    the run it triggers starts a child batch of this execution (DESIGN.md §5)."""
    module = sys.modules.get(_TRIGGER_MODULE)
    trigger_class = getattr(module, "TriggerDagRunOperator", None)
    if trigger_class is None or not isinstance(task, trigger_class):
        return  # not imported in this process, so this task cannot be one
    conf = task.conf
    if isinstance(conf, str) and conf.strip():
        try:
            conf = json.loads(conf)
        except ValueError:
            return  # the operator itself refuses a conf that is not JSON
    if conf is None or conf == "":
        conf = {}
    if not isinstance(conf, Mapping):
        return  # the operator itself refuses it
    bfx = conf.get("bfx")
    bfx = dict(bfx) if isinstance(bfx, Mapping) else {}
    bfx[PARENT_KEY] = execution_id
    task.conf = {**conf, "bfx": bfx}
    log.info(
        "[bfx] nested batch trigger task=%s trigger_dag_id=%s parent_execution_id=%s",
        getattr(task, "task_id", None),
        getattr(task, "trigger_dag_id", None),
        execution_id,
    )
