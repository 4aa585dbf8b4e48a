"""Read Airflow's record of earlier DAG runs and hand it to the store as typed evidence.

DESIGN.md §4 "Airflow's outcome is evidence": a try whose end the catalog never heard (marked by
hand, heartbeat timeout, executor failure, ended in the triggerer, lost to a catalog outage), or
a DAG run marked success or failed by hand, is closed with Airflow's outcome at the latest by
the next decision that needs it. That decision is a routed task's start: before the catalog
decides, the gate asks the store which runs of the DAG's latest lineage could disagree with
Airflow (one indexed read), asks Airflow for their states through the Task SDK (the execution
API: no metadata DB access from the task; for a batch that closed cleanly only the DAG run's
state, one small call), and the store adopts what differs
(:mod:`airflow_provider_bfx.catalog.evidence`). Once the run's batch has started a new lineage,
the store lists nothing and Airflow is not asked: the earlier lineage decides nothing in this run
(:func:`airflow_provider_bfx.catalog.adoption.runs_awaiting_evidence_txn`). Once it has resumed
the lineage, a later start asks only for its own task's instances in the runs listed, in one
call: the start that created the batch read the rest, and a later start's decision reads only
its own task's rows of those runs. No SQL here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.evidence import RUN_FAILED, disagrees
from airflow_provider_bfx.catalog.results import RunAwaitingEvidence
from airflow_provider_bfx.catalog.store import CatalogStore, RunEvidence

log = logging.getLogger("airflow_provider_bfx.routing")

_MAPPED_STATE_KEY = re.compile(r"^(?P<task>.+)_(?P<index>\d+)$")


def state_key(key: str, task_ids: set[str]) -> tuple[str, int]:
    """``get_task_states`` names a mapped task's instances ``<task_id>_<map_index>``."""
    if key in task_ids:
        return key, keys.UNMAPPED
    match = _MAPPED_STATE_KEY.match(key)
    if match and match["task"] in task_ids:
        return match["task"], int(match["index"])
    return key, keys.UNMAPPED


def state_text(state: Any) -> str | None:
    """An Airflow state as its plain value: the Task SDK hands some states over as ``str``
    enums whose ``str()`` is ``"DagRunState.FAILED"``, not ``"failed"``."""
    if state is None:
        return None
    return str(getattr(state, "value", state))


def task_states_of_runs(
    ti: Any, dag_id: str, run_ids: list[str], task_ids: set[str], map_index: int | None = None
) -> dict[str, dict[tuple[str, int], str | None]]:
    """Airflow's state of every instance of ``task_ids`` in each of ``run_ids`` (only the
    instances at ``map_index``, when given): one call."""
    narrowed = {} if map_index is None else {"map_index": map_index}
    states = ti.get_task_states(
        dag_id=dag_id, run_ids=run_ids, task_ids=sorted(task_ids), **narrowed
    )
    return {
        run_id: {
            state_key(k, task_ids): state_text(v) for k, v in (states.get(run_id) or {}).items()
        }
        for run_id in run_ids
    }


def task_states_of_run(
    ti: Any, dag_id: str, run_id: str, task_ids: set[str]
) -> dict[tuple[str, int], str | None]:
    """Airflow's state of every instance of ``task_ids`` in one DAG run."""
    return task_states_of_runs(ti, dag_id, [run_id], task_ids)[run_id]


def adopt_airflow_outcomes(
    ti: Any,
    store: CatalogStore,
    dag_id: str,
    run_id: str,
    task_id: str,
    item_fingerprint: str | None = None,
) -> bool:
    """Adopt Airflow's outcome of the earlier runs this start may depend on (see module doc).
    Returns whether the start depends on earlier runs at all: this run's batch does not exist
    yet (this start creates it), or the task has rows in earlier runs of the lineage (a
    resumed run). Then the start is not a first start in its lineage, and need not try the
    guarded one (``TaskSpec.read_first``, decision 0121).

    Once this run's batch exists, the runs are listed ``batch_started`` and only ``task_id``'s
    instances in them are asked for, in one call for all of them: its own rows are all this
    start's decision reads of those runs (:func:`.adoption.runs_awaiting_evidence_txn`). Their
    answer is adopted only where it disagrees with those rows
    (:func:`airflow_provider_bfx.catalog.evidence.disagrees`): the adoption transaction locks
    the earlier batch, and every task of a resumed run would otherwise queue on that lock.
    A mapped item passes its ``item_fingerprint``: only the rows of its own identity are read,
    and Airflow is asked only about the map index they sit at. A run holding no row of the
    task (or item) is not asked about: there is nothing Airflow's answer could change.

    An Airflow read that fails (a run deleted from the metadata DB, the API server briefly away)
    leaves those rows as the catalog has them, and says so: the catalog's own rules (leases,
    reconciliation) still apply, exactly as before this evidence existed. Catalog errors
    propagate: the gate turns them into the usual refusal or BFX_CATALOG_UNAVAILABLE.
    """
    runs = store.runs_awaiting_evidence(
        dag_id, run_id, task_id=task_id, item_fingerprint=item_fingerprint
    )
    if not runs:
        return False
    depends = any(not r.batch_started or r.task_rows for r in runs)
    found = _own_task_evidence(ti, dag_id, task_id, [r for r in runs if r.batch_started])
    for run in runs:
        if run.batch_started:
            continue
        try:
            dag_run_state = state_text(ti.get_dagrun_state(dag_id=dag_id, run_id=run.run_id))
        except Exception as exc:
            _unreadable(dag_id, run.run_id, exc)
            continue
        task_ids = set(run.task_ids)
        if run.settled:
            if dag_run_state != RUN_FAILED:
                continue  # Airflow agrees with a batch that closed cleanly
            task_ids = set(store.task_ids_of_batch(run.batch_execution_id))  # catalog: propagates
        try:
            states = task_states_of_run(ti, dag_id, run.run_id, task_ids)
        except Exception as exc:
            _unreadable(dag_id, run.run_id, exc)
            continue
        found.append(RunEvidence(run.run_id, dag_run_state, states))
    if found:
        store.adopt_airflow_states(dag_id, found)
    return depends


def _own_task_evidence(
    ti: Any, dag_id: str, task_id: str, runs: list[RunAwaitingEvidence]
) -> list[RunEvidence]:
    """Airflow's states of ``task_id``'s instances in ``runs``, for the runs where they
    disagree with the task's rows. The DAG run states are not asked: the batch start of this
    run adopted them. Runs holding no row of the task are left out (the task never started
    there, or the item is new). A mapped item's rows sit at one map index per run: only that
    instance is asked about, not every item of the task (:func:`_questions`)."""
    found: list[RunEvidence] = []
    for map_index, asked in _questions([r for r in runs if r.task_rows is None or r.task_rows]):
        run_ids = [run.run_id for run in asked]
        try:
            states = task_states_of_runs(ti, dag_id, run_ids, {task_id}, map_index)
        except Exception as exc:
            _unreadable(dag_id, ",".join(run_ids), exc)
            continue
        for run in asked:
            evidence = RunEvidence(run.run_id, None, states[run.run_id])
            if disagrees(run, evidence):
                found.append(evidence)
    return found


def _questions(
    runs: list[RunAwaitingEvidence],
) -> list[tuple[int | None, list[RunAwaitingEvidence]]]:
    """The calls that cover ``runs``: one per map index where a mapped item's rows sit (runs
    whose rows sit at the same index share it; a reordered list puts an identity at another
    index from one run to the next), and one without a map index, for every instance, for the
    others (an unmapped task; rows not read; an identity at several indexes of one run). In
    the common cases, one call."""
    groups: dict[int | None, list[RunAwaitingEvidence]] = {}
    for run in runs:
        slots = {row.map_index for row in run.task_rows or ()}
        only = next(iter(slots)) if run.task_rows is not None and len(slots) == 1 else None
        groups.setdefault(only if only is not None and only >= 0 else None, []).append(run)
    return list(groups.items())


def _unreadable(dag_id: str, run_id: str, exc: Exception) -> None:
    log.warning(
        "bfx: could not read Airflow's record of DAG run %s/%s (%s); its catalog rows stay as"
        " they are",
        dag_id,
        run_id,
        exc,
    )
