"""The request the gate sends the catalog: the task's definition facts (computed once per
process from the parse-time task) and the :class:`~airflow_provider_bfx.catalog.results.TaskSpec`
of this try."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.results import BatchSpec, TaskSpec, default_lease_owner
from airflow_provider_bfx.routing import fingerprint
from airflow_provider_bfx.routing.marks import is_mapped
from airflow_provider_bfx.routing.run_conf import RunConf
from airflow_provider_bfx.routing.settings import BfxSettings


@dataclass(frozen=True)
class TaskFacts:
    operator_fingerprint: str
    decides_shape: bool
    feeds_expand: bool  # an unexpanded mapped task maps over this task's output
    multiple_outputs: bool


_facts: dict[int, tuple[Any, TaskFacts]] = {}
_facts_lock = threading.Lock()


def task_facts(parse_task: Any) -> TaskFacts:
    """Facts of the parse-time task object (never the rendered copy the runner executes)."""
    with _facts_lock:
        cached = _facts.get(id(parse_task))
        if cached is not None and cached[0] is parse_task:
            return cached[1]
    from airflow.sdk import SkipMixin

    mapped = is_mapped(parse_task)
    facts = TaskFacts(
        operator_fingerprint=fingerprint.operator_fingerprint(parse_task),
        decides_shape=issubclass(fingerprint.operator_class(parse_task), SkipMixin),
        feeds_expand=not mapped and next(parse_task.iter_mapped_dependants(), None) is not None,
        multiple_outputs=bool(getattr(parse_task, "multiple_outputs", False)),
    )
    with _facts_lock:
        if len(_facts) > 4096:
            _facts.clear()
        _facts[id(parse_task)] = (parse_task, facts)
    return facts


def parse_time_task(context: Mapping[str, Any]) -> Any:
    ti = context["ti"]
    dag = context.get("dag") or getattr(ti.task, "dag", None)
    task_dict = getattr(dag, "task_dict", None) or {}
    return task_dict.get(ti.task_id, ti.task)


def _naive_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def mapped_input(parse_task: Any, context: Mapping[str, Any]) -> dict[str, Any]:
    """The mapped input of this mapped task instance, ``{argument: value}``, resolved the way
    the task runner resolves it (from the literal list, or the upstream's XCom)."""
    attr = getattr(parse_task, "_expand_input_attr", None)
    expand_input = getattr(parse_task, attr, None) if attr else None
    if expand_input is not None and hasattr(expand_input, "resolve"):
        resolved, _ = expand_input.resolve(context)
        return dict(resolved)
    # A task inside a mapped task group: its arguments reference the group's input.
    runtime = context["ti"].task
    fields = sorted(getattr(runtime, "template_fields", ()) or ())
    return {name: getattr(runtime, name, None) for name in fields}


def task_spec(
    context: Mapping[str, Any],
    parse_task: Any,
    facts: TaskFacts,
    settings: BfxSettings,
    run_conf: RunConf,
) -> TaskSpec:
    ti = context["ti"]
    map_index = keys.UNMAPPED if ti.map_index is None else int(ti.map_index)
    batch = BatchSpec(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        logical_date=_naive_utc(context.get("logical_date")),
        full_rerun=run_conf.full_rerun,
        resume_scope=settings.resume_scope,
        parent_execution_id=run_conf.parent_execution_id,
        retry_limit=settings.dag_retry_limit,
        default_retry_limit=settings.retry_limit,
        default_max_resume_age=settings.max_resume_age,
    )
    item = keys.NO_ITEM
    if map_index != keys.UNMAPPED:
        item = fingerprint.item_fingerprint(mapped_input(parse_task, context))
    return TaskSpec(
        batch=batch,
        task_id=ti.task_id,
        map_index=map_index,
        try_number=int(ti.try_number or 1),
        item_fingerprint=item,
        operator_fingerprint=facts.operator_fingerprint,
        policy=settings.version_mismatch_policy,
        decides_shape=facts.decides_shape,
        lease_owner=default_lease_owner(),
        lease_seconds=settings.lease_duration,
        read_first=not getattr(ti.task, "upstream_task_ids", None) or started_before(context),
    )


def started_before(context: Mapping[str, Any]) -> bool:
    """This try was started in an earlier process: a sensor's later poke in reschedule mode,
    or a deferred try resumed after its trigger fired. Its row exists, so its start is not a
    first start (``TaskSpec.read_first``, decision 0121). A hint only: a wrong answer costs a
    round trip, never a decision."""
    if int(context.get("task_reschedule_count") or 0) > 0:
        return True
    from_server = getattr(context.get("ti"), "_ti_context_from_server", None)
    return getattr(from_server, "next_method", None) is not None
