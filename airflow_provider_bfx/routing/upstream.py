"""``all_success``, restored: routing turned a task's default ``all_success`` into
``none_failed`` (a task downstream of a skipped-as-completed task must run); the gate skips it
when an upstream was skipped for any other reason (``[BFX_UPSTREAM_SKIPPED]``)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import ExecutionStatus, format_token
from airflow_provider_bfx.catalog.results import ExecutionRecord
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.routing.evidence import state_key
from airflow_provider_bfx.routing.records import GateRecord, Outcome, TryKey, remember

log = logging.getLogger("airflow_provider_bfx.routing")

#: Not one of the contract's catalog tokens: Airflow's own all_success decision, restored.
UPSTREAM_SKIPPED = "BFX_UPSTREAM_SKIPPED"


Latest = dict[tuple[str, int], ExecutionRecord]


def _latest_task_rows(store: CatalogStore, dag_id: str, run_id: str, tasks: set[str]) -> Latest:
    """The latest catalog row of each (task_id, map_index) of ``tasks`` in one DAG run: only
    the upstreams' rows are read, so the check costs the same in a run of 50 tasks or 5,000
    (decision 0100)."""
    latest: Latest = {}
    for row in store.latest_task_records(dag_id, run_id, tasks):
        slot = (str(row.task_id), int(row.map_index))
        if slot not in latest or row.execution_id > latest[slot].execution_id:
            latest[slot] = row
    return latest


def _gate_skipped(row: ExecutionRecord) -> bool:
    """A C row the GATE wrote without running anything (completed, or package disabled). A
    skip the task's own logic raised is also C, but its row ran under a lease: it does not
    count (decision 0045)."""
    return bool(row.status_code == ExecutionStatus.SKIPPED.value and row.lease_owner is None)


def _upstreams_fine_in_catalog(latest: Latest, upstream: set[str]) -> bool:
    """True when the catalog alone shows that no upstream was skipped for another reason than
    "already completed": each upstream is unmapped and its latest row in this run succeeded
    (S) or was skipped by the gate. Then Airflow need not be asked (decision 0052)."""
    found: dict[str, ExecutionRecord] = {}
    for (task_id, map_index), row in latest.items():
        if task_id in upstream:
            if map_index != keys.UNMAPPED:
                return False  # how many instances there are is Airflow's to say
            found[task_id] = row
    return found.keys() == upstream and all(
        row.status_code == ExecutionStatus.SUCCEEDED.value or _gate_skipped(row)
        for row in found.values()
    )


def require_upstreams(ti: Any, store: CatalogStore, key: TryKey) -> None:
    upstream = set(getattr(ti.task, "upstream_task_ids", ()) or ())
    if not upstream:
        return
    latest = _latest_task_rows(store, key.dag_id, key.run_id, upstream)
    if _upstreams_fine_in_catalog(latest, upstream):
        return
    states = ti.get_task_states(dag_id=key.dag_id, run_ids=[key.run_id], task_ids=sorted(upstream))
    skipped = sorted(k for k, state in (states.get(key.run_id) or {}).items() if state == "skipped")
    if not skipped:
        return
    completed = {slot for slot, row in latest.items() if _gate_skipped(row)}
    other = [k for k in skipped if state_key(k, upstream) not in completed]
    if not other:
        return
    line = format_token(
        UPSTREAM_SKIPPED,
        dag=key.dag_id,
        task=key.task_id,
        map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
        upstream=",".join(other),
    )
    log.info("%s", line)
    remember(key, GateRecord(Outcome.SKIPPED))
    raise AirflowSkipException(line)
