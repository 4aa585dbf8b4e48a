"""The end of a try: record its output, then end its execution from the matching callback.

* ``post_execute`` (:func:`record_output`) runs right after ``execute`` returned, before Airflow
  reports the state: the return value is written as the ``NODE_OUTPUT`` checkpoint
  ``return_value``, so that a later run that skips this task as completed can replay it.
* ``on_success`` -> ``S``; ``on_retry`` -> a failed try (``F``, Airflow retries); ``on_failure``
  -> the final failure (``F``, the batch is marked failed); ``on_skipped`` -> a skip raised by the
  task's own logic (``C``/``P``). Airflow decides which callback fires (``ti.state``), so
  ``AirflowFailException`` and a retry policy are honoured without re-deriving them here.

The execution is found again from the gate's record of this try in this process (decision
0042); failing that (a callback run in another process), the catalog row of this try is looked
up read-only. Nothing here ever raises: a callback's exception would only be logged by Airflow,
and a catalog that is down must not turn a finished task into something else. A try whose row
stays active is closed later by the lease expiry scan.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import format_token
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.payload import UNRECORDED, UnrecordablePayload
from airflow_provider_bfx.routing.handle import RETURN_VALUE_NODE, ExecutionHandle
from airflow_provider_bfx.routing.records import GateRecord, Outcome, TryKey, forget, recall

log = logging.getLogger("airflow_provider_bfx.routing")

_ERROR_MESSAGE_LIMIT = 4000
#: Not one of the contract's catalog tokens (DESIGN.md §7 keeps that list): a return value the
#: catalog cannot hold, so the task will run again instead of being skipped (decision 0091).
UNRECORDABLE_OUTPUT = "BFX_UNRECORDABLE_OUTPUT"


def _record_for(context: Any, key: TryKey) -> GateRecord | None:
    record = recall(key)
    if record is not None:
        return record
    return _lookup(context, key)


def _lookup(context: Any, key: TryKey) -> GateRecord | None:
    """The active row of this try in the catalog, found by its ``ExternalExecutionID``
    (read-only, one indexed read): a callback that runs in another process."""
    from airflow_provider_bfx.catalog.codes import parse_status
    from airflow_provider_bfx.routing.catalog import get_store
    from airflow_provider_bfx.routing.settings import settings_for

    dag = context.get("dag") or getattr(context["ti"].task, "dag", None)
    store = get_store(settings_for(dag).catalog_conn_id)
    found = store.find_try(key.external_id)
    if found is None:
        return None
    # A hand-edited code names the row.
    status = parse_status(found.status_code, row=store.where(found.execution_id))
    if not status.is_active:
        return None
    handle = ExecutionHandle(
        execution_id=found.execution_id,
        batch_execution_id=int(found.parent_execution_id or 0),
        original_execution_id=int(found.original_execution_id or found.execution_id),
        status=status,
        audit_id=found.audit_id,
        attempt_number=int(found.attempt_number),
        scope_key="",
        store=store,
    )
    return GateRecord(Outcome.RUN, handle)


def record_output(context: Any, result: Any) -> None:
    """Write the return value as the ``return_value`` checkpoint of this lineage.

    A value the catalog cannot hold (not standard JSON: a ``datetime``, ``NaN``...) does not
    fail the task: Airflow's own XCom serves it to this run. The ``return_value`` checkpoint is
    then written as the marker :data:`UNRECORDED` (``Payload`` NULL) and a warning names the
    task, the type and the value, so that a later run that would skip this task as completed
    runs it again instead of serving a missing output (decision 0091)."""
    if result is None:
        return
    try:
        key = TryKey.of(context["ti"])
        record = recall(key)
        if record is None or record.handle is None:
            return
        if record.outcome not in (Outcome.RUN, Outcome.RERUN_FOR_OUTPUT):
            return
        handle = record.handle
        store = handle.store
        assert store is not None

        def write(payload: Any) -> None:
            store.write_checkpoint(
                execution_id=handle.execution_id,
                scope_key=handle.scope_key,
                node=RETURN_VALUE_NODE,
                payload=payload,
                item_fingerprint=handle.item_fingerprint or None,
                operator_fingerprint=handle.operator_fingerprint,
            )

        try:
            write(result)
        except UnrecordablePayload as exc:
            log.warning(
                "%s: %s. The next run that would skip this task as completed runs it again"
                " instead (decision 0091); return JSON to have it skipped and its value"
                " replayed",
                format_token(
                    UNRECORDABLE_OUTPUT,
                    task=key.task_id,
                    map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
                    type=exc.type_name,
                    execution_id=handle.execution_id,
                ),
                exc,
            )
            write(UNRECORDED)
    except Exception:
        log.exception("bfx: could not record the return value of %s", context["ti"].task_id)


def _end(context: Any, outcome: TaskOutcome) -> None:
    try:
        key = TryKey.of(context["ti"])
        record = _record_for(context, key)
        forget(key)
        if record is None or record.handle is None or record.outcome is not Outcome.RUN:
            return
        handle = record.handle
        assert handle.store is not None
        if handle.lease is not None:
            handle.lease.stop()
        error = context.get("exception") if outcome is not TaskOutcome.SUCCESS else None
        if outcome is TaskOutcome.SKIPPED_BY_LOGIC:
            error = None
        kwargs: dict[str, Any] = {}
        if error is not None:
            kwargs = {
                "error_type": f"{type(error).__module__}.{type(error).__qualname__}",
                "error_message": str(error)[:_ERROR_MESSAGE_LIMIT] or type(error).__name__,
                "error_detail": "".join(traceback.format_exception(error)),
            }
        elif outcome in (TaskOutcome.FAILED_TRY, TaskOutcome.FINAL_FAILURE):
            kwargs = {"error_type": "unknown", "error_message": "the task failed (no exception)"}
        handle.store.end_task(handle.execution_id, outcome, **kwargs)
    except Exception:
        log.exception(
            "bfx: could not record %s of %s in the catalog; its row stays active until the lease"
            " expiry scan closes it",
            outcome.value,
            getattr(context.get("ti"), "task_id", "?"),
        )


def on_success(context: Any) -> None:
    _end(context, TaskOutcome.SUCCESS)


def on_retry(context: Any) -> None:
    _end(context, TaskOutcome.FAILED_TRY)


def on_failure(context: Any) -> None:
    _end(context, TaskOutcome.FINAL_FAILURE)


def on_skipped(context: Any) -> None:
    _end(context, TaskOutcome.SKIPPED_BY_LOGIC)
