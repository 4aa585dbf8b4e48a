"""Install the gate and the callbacks on a DAG's tasks (used by the policy and ``route_dag``).

Runs at parse time, in every process that parses the DAG file (DAG processor, task process,
``dags test``), many times per process: it does no I/O, is idempotent, and leaves anything the
DAG author installed in place (their hooks are chained, their callbacks kept).

What it changes on each task:

* ``pre_execute`` = the gate, ``post_execute`` = the output recorder (chained before/after the
  author's own). On a mapped task these live in ``partial_kwargs``, which Airflow serializes as
  source text: the functions installed there are the stable trampolines of
  :mod:`airflow_provider_bfx.callbacks` (decision 0041);
* the four callbacks, appended; on the DAG, the two DAG callbacks that close its batches;
* ``operator_extra_links``: "Recovery" appended (the task's recovery view, decision 0097),
  unless ``[bfx] recovery_link`` is off (decision 0112). On a mapped task it is set on the
  ``MappedOperator``, which ``unmap`` does not pass on: the gate carries it to the operator each
  try runs (:func:`airflow_provider_bfx.plugins.links.carry_recovery_link`);
* ``trigger_rule``: the default ``all_success`` becomes ``none_failed`` (a task downstream of a
  skipped-as-completed task must run); the gate restores ``all_success`` for the others. Which
  tasks were converted is remembered here, per (dag_id, task_id), for the gate of this process;
* ``execute`` of a task whose output an ``.expand()`` maps over is wrapped, so the gate can
  serve it as SUCCESS with its recorded output (decision 0043).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from airflow_provider_bfx.callbacks import (
    DAG_CALLBACKS,
    TASK_CALLBACKS,
    bfx_post_execute,
    bfx_pre_execute,
)
from airflow_provider_bfx.routing.marks import (
    ALL_SUCCESS,
    CHAIN_MARK,
    GATED_MARK,
    REPLAY_KEY,
    all_success_restored,
    is_mapped,
    mark_converted,
    replays_output,
)

__all__ = ["all_success_restored", "is_mapped", "replays_output", "route_task", "route_tasks"]

log = logging.getLogger("airflow_provider_bfx.routing")


# -- hooks -----------------------------------------------------------------------------------


def _is_ours(hook: Any, ours: Callable[..., Any]) -> bool:
    return hook is ours or bool(getattr(hook, CHAIN_MARK, False))


def _chain_pre(user_hook: Callable[..., Any]) -> Callable[..., Any]:
    def bfx_chained_pre_execute(context: Any) -> None:
        bfx_pre_execute(context)
        user_hook(context)

    setattr(bfx_chained_pre_execute, CHAIN_MARK, True)
    return bfx_chained_pre_execute


def _chain_post(user_hook: Callable[..., Any]) -> Callable[..., Any]:
    def bfx_chained_post_execute(context: Any, result: Any = None) -> None:
        user_hook(context, result)
        bfx_post_execute(context, result)

    setattr(bfx_chained_post_execute, CHAIN_MARK, True)
    return bfx_chained_post_execute


def _hooked(current: Any, ours: Callable[..., Any], chain: Callable[..., Any]) -> Any:
    if current is None:
        return ours
    if _is_ours(current, ours):
        return current
    return chain(current)


def _with_callback(current: Any, callback: Callable[..., Any]) -> list[Any] | None:
    """The callbacks list with ``callback`` appended; None when it is already there."""
    if current is None:
        callbacks: list[Any] = []
    elif callable(current):
        callbacks = [current]
    else:
        callbacks = list(current)
    if any(cb is callback for cb in callbacks):
        return None
    return [*callbacks, callback]


# -- execute wrapper (replay for the producer of a mapped input) ------------------------------


def _gated_execute(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def gated_execute(context: Any) -> Any:
        if REPLAY_KEY in context:
            return context[REPLAY_KEY]
        # Dispatch to the rendered runtime copy the runner prepared, never to the parse-time
        # object ``original`` is bound to: its templated arguments are still unrendered.
        task = context["ti"].task
        return type(task).execute(task, context)

    setattr(gated_execute, GATED_MARK, True)
    return gated_execute


# -- one task, one DAG ------------------------------------------------------------------------


def mapped_input_producers(dag: Any) -> frozenset[str]:
    """The ids of the tasks of ``dag`` whose output a mapped task or mapped task group expands
    over: those for which ``task.iter_mapped_dependants()`` yields something, found for every
    task at once. That method walks the whole DAG for the one task it is asked about, so asking
    it for each task cost O(tasks²) in every parse of a routed DAG: 70 ms of each task
    process's CPU for the 52-task example (issue 12, decision 0118). Same test as Airflow's
    (``AbstractOperator._iter_all_mapped_downstreams`` and ``iter_mapped_dependants``): a mapped
    node, other than the task, that has the task upstream and among its mapped dependencies."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup, TaskGroup

    found: set[str] = set()

    def walk(group: Any) -> None:
        for key, child in group.children.items():
            if isinstance(child, (MappedOperator, MappedTaskGroup)):
                upstream = child.upstream_task_ids
                found.update(
                    dep.node_id
                    for dep in child.iter_mapped_dependencies()
                    if dep.node_id != key and dep.node_id in upstream
                )
            if isinstance(child, TaskGroup):
                walk(child)

    walk(dag.task_group)
    return frozenset(found)


def route_task(
    task: Any, dag_id: str, *, link: bool | None = None, mapped_input: bool | None = None
) -> None:
    """Install the gate, the recorder and the callbacks on ``task`` (idempotent). ``link``:
    whether to add the "Recovery" link (None: as ``[bfx] recovery_link`` says).
    ``mapped_input``: whether a mapped task expands over this task's output (None: ask the
    task, which walks the DAG; :func:`route_tasks` knows it for every task at once)."""
    if is_mapped(task):
        partial = task.partial_kwargs
        partial["pre_execute"] = _hooked(partial.get("pre_execute"), bfx_pre_execute, _chain_pre)
        partial["post_execute"] = _hooked(
            partial.get("post_execute"), bfx_post_execute, _chain_post
        )
    else:
        task._pre_execute_hook = _hooked(task._pre_execute_hook, bfx_pre_execute, _chain_pre)
        task._post_execute_hook = _hooked(task._post_execute_hook, bfx_post_execute, _chain_post)
        if mapped_input is None:
            mapped_input = next(task.iter_mapped_dependants(), None) is not None
        if mapped_input and not replays_output(task):
            task.execute = _gated_execute(task.execute)
    for attr, callback in TASK_CALLBACKS:
        updated = _with_callback(getattr(task, attr, None), callback)
        if updated is not None:
            setattr(task, attr, updated)
    if _link_wanted() if link is None else link:
        from airflow_provider_bfx.plugins.links import add_recovery_link

        add_recovery_link(task)
    if str(getattr(task.trigger_rule, "value", task.trigger_rule)) == ALL_SUCCESS:
        from airflow.sdk import TriggerRule

        task.trigger_rule = TriggerRule.NONE_FAILED
        mark_converted(dag_id, task.task_id)


def _link_wanted() -> bool:
    """``[bfx] recovery_link``. A value that is not a boolean keeps the link (the default) and
    is logged here; the gate fails the task on it before any work, naming the option."""
    from airflow_provider_bfx.routing.settings import BfxSettingsError, recovery_link

    try:
        return recovery_link()
    except BfxSettingsError as exc:
        log.error("bfx: %s; the Recovery link is kept", exc)
        return True


def route_tasks(dag: Any) -> None:
    """Route every task of ``dag``, and append the DAG callbacks that close its batches."""
    link = _link_wanted()
    producers = mapped_input_producers(dag)
    for task in dag.tasks:
        route_task(task, dag.dag_id, link=link, mapped_input=task.task_id in producers)
    for attr, callback in DAG_CALLBACKS:
        updated = _with_callback(getattr(dag, attr, None), callback)
        if updated is not None:
            setattr(dag, attr, updated)
            # The Task SDK DAG computes has_on_*_callback once, at construction; the serialized
            # DAG (and so the scheduler's decision to send the callback) reads only the flag.
            flag = f"has_{attr}"
            if hasattr(dag, flag):
                setattr(dag, flag, True)
