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
3. component by component (:func:`steps`: the order, and why it is safe), writes each
   skipped task's recorded return value as that task's XCom (``XCom.set``), with those of the
   skipped tasks upstream of it, so that downstream tasks pull what they would have pulled,
   then
4. sends the Task SDK's ``SkipDownstreamTasks`` with that component: the execution API marks
   those task instances *skipped* in this DAG run, leaving alone any already running or
   finished.

Every step is an optimisation of work the tasks would do themselves, so a failure here is
logged and the run goes on: if the catalog transaction fails nothing is written; if the XCom
writes or the skip message fail, the catalog rows stand and each task still starts and skips
itself (its gate reads the ``C`` row as its prior decision). A task already running decides
for itself as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.results import SkippedAhead, TaskSpec, TaskStarted
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.routing.evidence import task_states_of_run
from airflow_provider_bfx.routing.marks import is_mapped, is_routed
from airflow_provider_bfx.routing.request import task_facts
from airflow_provider_bfx.routing.settings import BfxSettings

log = logging.getLogger("airflow_provider_bfx.routing")


@dataclass(frozen=True)
class Step:
    """One ``SkipDownstreamTasks`` message, and the XComs written before it is sent."""

    write: tuple[SkippedAhead, ...]
    tell: tuple[SkippedAhead, ...]


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
        for step in steps(dag, skipped, spec.task_id):
            _replay_outputs(dag, spec, step.write)
            _skip_in_airflow(step.tell)
            told += len(step.tell)
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


def steps(dag: Any, skipped: list[SkippedAhead], own_task_id: str | None = None) -> list[Step]:
    """The order Airflow is told of the skipped tasks, and the XComs written before each
    message (decision 0106).

    Two rules make it safe:

    * a message tells a whole *component* of the skipped set (its tasks joined by edges
      between skipped tasks, either way). A skip lets Airflow schedule the downstream tasks;
      a skipped task's upstreams and downstreams among the skipped tasks are in its component,
      so no skipped task becomes schedulable before it is told itself;
    * before a component is told, the outputs of its tasks *and of every skipped task
      upstream of them* (through any task, skipped or not) are written. A task that runs reads
      the outputs of its upstream tasks, near or far (``xcom_pull`` of any upstream); it can
      start only once its upstreams ended, and an upstream ends here by being told (its
      component's upstream outputs were written first) or by running (and it started, by the
      same rule, after the outputs upstream of it were written). So no task that runs reads
      an output before it is written.

    The components that let a task run go first (a task outside the set whose skipped
    upstreams are all in that component: the restarted load, on the run's critical path),
    then the others, fewest XCom writes first: the sooner a component is told, the less time
    its first tasks have to be scheduled by Airflow ahead of the message and take a process.
    A component below the deciding task (``own_task_id``) goes after those: none of its tasks
    can be scheduled before this try ends.
    """
    by_id = {s.task_id: s for s in skipped}
    position = {task_id: i for i, task_id in enumerate(by_id)}
    components: list[list[str]] = []
    seen: set[str] = set()
    for start in by_id:
        if start in seen:
            continue
        seen.add(start)
        members, stack = [], [start]
        while stack:
            task_id = stack.pop()
            members.append(task_id)
            task = dag.task_dict[task_id]
            for other in (*task.upstream_task_ids, *task.downstream_task_ids):
                if other in by_id and other not in seen:
                    seen.add(other)
                    stack.append(other)
        components.append(sorted(members, key=position.__getitem__))

    def skipped_upstream(members: list[str]) -> set[str]:
        """The skipped tasks upstream of ``members``, near or far, and ``members``."""
        found, stack = set(members), list(members)
        while stack:
            for up in dag.task_dict[stack.pop()].upstream_task_ids:
                if up not in found:
                    found.add(up)
                    stack.append(up)
        return {task_id for task_id in found if task_id in by_id}

    def lets_a_task_run(members: list[str]) -> bool:
        inside = set(members)
        for task_id in members:
            for down in dag.task_dict[task_id].downstream_task_ids:
                if down in by_id:
                    continue
                ups = dag.task_dict[down].upstream_task_ids
                if all(up in inside for up in ups if up in by_id):
                    return True
        return False

    def below_own_task(members: list[str]) -> bool:
        return any(own_task_id in dag.task_dict[t].upstream_task_ids for t in members)

    needs = [skipped_upstream(members) for members in components]
    order = sorted(
        range(len(components)),
        key=lambda i: (
            not lets_a_task_run(components[i]),
            below_own_task(components[i]),
            len(needs[i]),
            i,
        ),
    )
    out: list[Step] = []
    written: set[str] = set()
    for i in order:
        write = sorted(needs[i] - written, key=position.__getitem__)
        written.update(write)
        out.append(
            Step(
                write=tuple(by_id[t] for t in write),
                tell=tuple(by_id[t] for t in components[i]),
            )
        )
    return out


def _replay_outputs(dag: Any, spec: TaskSpec, skipped: Sequence[SkippedAhead]) -> None:
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


def _skip_in_airflow(skipped: Sequence[SkippedAhead]) -> None:
    """One ``SkipDownstreamTasks`` message per component (:func:`steps`): the execution API
    skips the listed task instances of this DAG run that have not started (it names them
    "downstream", but checks only that they belong to the run)."""
    from airflow.sdk.execution_time.comms import SkipDownstreamTasks
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

    SUPERVISOR_COMMS.send(SkipDownstreamTasks(tasks=[(s.task_id, keys.UNMAPPED) for s in skipped]))
