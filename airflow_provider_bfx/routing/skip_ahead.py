"""Skip ahead: a resumed run skips its completed tasks without a task process each (issue 12,
decision 0106).

Without it, every task of a resumed run that the catalog knows is done still costs a worker
slot, a process start, a DAG parse and a gate, only to end *skipped*. The start that creates
a resumed run's batch (``TaskStarted.resumed_batch``) instead:

1. picks the candidates from the DAG: every other routed, unmapped task outside a mapped task
   group that neither decides the run's shape (branch, short-circuit: they decide again) nor
   produces an ``.expand()`` input (Airflow never expands over a skipped producer, 0043), and
   that Airflow has not scheduled yet (one ``get_task_states`` call: the run's other first
   tasks are already queued and decide for themselves);
2. has the store decide them with their own gates' rule and write the ``C`` rows of those it
   skips, in one transaction (:mod:`airflow_provider_bfx.catalog.skip_ahead`);
3. layer by layer, deepest first (:func:`waves`), writes each skipped task's recorded return
   value as that task's XCom (``XCom.set``), so downstream tasks pull what they would have
   pulled, then
4. sends the Task SDK's ``SkipDownstreamTasks`` with that layer: the execution API marks those
   task instances *skipped* in this DAG run, leaving alone any already running or finished.

Every step is an optimisation of work the tasks would do themselves, so a failure here is
logged and the run goes on: if the catalog transaction fails nothing is written; if the XCom
writes or the skip message fail, the catalog rows stand and each task still starts and skips
itself (its gate reads the ``C`` row as its prior decision). A task already running decides
for itself as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.results import SkippedAhead, TaskSpec, TaskStarted
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.routing.evidence import task_states_of_run
from airflow_provider_bfx.routing.marks import is_mapped, is_routed
from airflow_provider_bfx.routing.request import task_facts
from airflow_provider_bfx.routing.settings import BfxSettings

log = logging.getLogger("airflow_provider_bfx.routing")


def candidates(dag: Any, own_task_id: str) -> Iterator[Any]:
    """The tasks skip ahead may decide (module docstring, step 1), in the DAG's order."""
    for task in dag.tasks:
        if task.task_id == own_task_id or is_mapped(task) or not is_routed(task):
            continue
        if task.get_closest_mapped_task_group() is not None:
            continue
        facts = task_facts(task)
        if facts.decides_shape or facts.feeds_expand:
            continue
        yield task


def skip_ahead(
    context: Mapping[str, Any],
    store: CatalogStore,
    spec: TaskSpec,
    started: TaskStarted,
    settings: BfxSettings,
) -> list[SkippedAhead]:
    """Skip the run's completed tasks ahead when ``started`` created a resumed batch."""
    if not started.resumed_batch or not settings.skip_ahead:
        return []
    ti = context["ti"]
    dag = context.get("dag") or ti.task.dag
    try:
        specs = _candidate_specs(ti, dag, spec)
    except Exception as exc:  # e.g. Airflow's states unreadable: nothing was written
        log.warning(
            "bfx: skip ahead could not pick its tasks (%s: %s); each completed task starts and"
            " skips itself",
            type(exc).__name__,
            exc,
        )
        return []
    try:
        skipped = store.skip_ahead(spec.batch, specs)
    except Exception as exc:
        # Nothing was written (one transaction). This try's own start is recorded and stands:
        # an outage or a corrupt row of another task must not fail it; each of those tasks
        # meets the same error, with the usual message, when it starts.
        log.warning(
            "bfx: skip ahead failed in the catalog (%s: %s); each completed task starts and"
            " skips itself",
            type(exc).__name__,
            exc,
        )
        return []
    if not skipped:
        return []
    told = 0
    try:
        for wave in waves(dag, skipped):
            _replay_outputs(dag, spec, wave)
            _skip_in_airflow(wave)
            told += len(wave)
    except Exception as exc:
        log.warning(
            "bfx: skip ahead wrote %d completed tasks to the catalog but could tell Airflow of"
            " only %d (%s: %s); each of the others starts and skips itself instead",
            len(skipped),
            told,
            type(exc).__name__,
            exc,
        )
        return skipped
    log.info(
        "bfx: skipped ahead %d completed tasks of this resumed run without a task process each: %s",
        len(skipped),
        ",".join(s.task_id for s in skipped),
    )
    return skipped


def _candidate_specs(ti: Any, dag: Any, spec: TaskSpec) -> list[TaskSpec]:
    """The requests for the candidates Airflow has not scheduled yet (module docstring, 1)."""
    tasks = {task.task_id: task for task in candidates(dag, spec.task_id)}
    waiting = _not_scheduled(ti, spec, set(tasks))
    return [
        TaskSpec(
            batch=spec.batch,
            task_id=task_id,
            map_index=keys.UNMAPPED,
            try_number=keys.AHEAD_TRY,
            operator_fingerprint=task_facts(task).operator_fingerprint,
            policy=spec.policy,
        )
        for task_id, task in tasks.items()
        if task_id in waiting
    ]


def _not_scheduled(ti: Any, spec: TaskSpec, task_ids: set[str]) -> set[str]:
    """Those of ``task_ids`` Airflow has not scheduled yet in this run (no state: they wait on
    their upstreams). One that is already scheduled, queued or running (the run's other first
    tasks) starts anyway: its own gate decides it, so that it is decided exactly once."""
    if not task_ids:
        return set()
    states = task_states_of_run(ti, spec.batch.dag_id, spec.batch.run_id, task_ids)
    return {task_id for (task_id, _), state in states.items() if state is None}


def waves(dag: Any, skipped: list[SkippedAhead]) -> list[list[SkippedAhead]]:
    """The skipped tasks in the order Airflow is told: deepest layer first, where a task's
    layer is one more than its deepest upstream among them (0: none is).

    Skipping a task lets Airflow schedule its downstream tasks. Told deepest first, a skipped
    task is never told after one of its upstreams, so no task of the set becomes schedulable
    before it is skipped itself; and the tasks that must run downstream of the deepest ones
    (the failed load, on the run's critical path) can start after the first layer, not the
    last. Each layer's outputs are written before its skip, so a task's XCom exists whenever
    it shows finished. (Told shallowest first, each layer let Airflow schedule the next before
    it was skipped: measured, more task processes, not fewer.)"""
    ids = {s.task_id for s in skipped}
    layer: dict[str, int] = {}
    for start in ids:
        stack = [start]
        while stack:
            task_id = stack[-1]
            if task_id in layer:
                stack.pop()
                continue
            ups = [u for u in dag.task_dict[task_id].upstream_task_ids if u in ids]
            missing = [u for u in ups if u not in layer]
            if missing:
                stack.extend(missing)
                continue
            layer[task_id] = 1 + max((layer[u] for u in ups), default=-1)
            stack.pop()
    out: list[list[SkippedAhead]] = [[] for _ in range(1 + max(layer.values(), default=-1))]
    for s in skipped:
        out[layer[s.task_id]].append(s)
    return out[::-1]


def _replay_outputs(dag: Any, spec: TaskSpec, skipped: list[SkippedAhead]) -> None:
    """Each skipped task's recorded return value as its own XCom (and its keys, for a task
    with ``multiple_outputs``), as its gate would have pushed it."""
    from airflow.sdk.execution_time.xcom import XCom

    for s in skipped:
        if not s.has_output or s.output is None:
            continue
        where = dict(dag_id=spec.batch.dag_id, task_id=s.task_id, run_id=spec.batch.run_id)
        XCom.set("return_value", s.output, **where)
        if task_facts(dag.task_dict[s.task_id]).multiple_outputs and isinstance(s.output, Mapping):
            for name, value in s.output.items():
                XCom.set(str(name), value, **where)


def _skip_in_airflow(skipped: list[SkippedAhead]) -> None:
    """One ``SkipDownstreamTasks`` message per layer: the execution API skips the listed task
    instances of this DAG run that have not started (it names them "downstream", but checks
    only that they belong to the run)."""
    from airflow.sdk.execution_time.comms import SkipDownstreamTasks
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

    SUPERVISOR_COMMS.send(SkipDownstreamTasks(tasks=[(s.task_id, keys.UNMAPPED) for s in skipped]))
