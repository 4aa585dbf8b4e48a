"""Airflow's outcome is evidence (DESIGN.md §4): the pure rules that adopt it. No I/O here.

The catalog hears how a try ended from the task's own callbacks. Some ends never reach it: a
task marked success or failed by hand (the API server runs no task callback), a heartbeat
timeout or executor failure whose callback could not find the try, a deferrable task that ended
in the triggerer, an end lost to a catalog outage, a DAG run marked success or failed by hand.
Airflow still knows each of those outcomes. Before a decision depends on such a row, the gate
reads Airflow's states of the runs concerned and the store applies these rules; every change is
logged with the token ``BFX_ADOPTED_AIRFLOW_STATE`` (docs/decisions/0080).

The rules only ever move a row toward what Airflow recorded, and leave alone what agrees with it
or what Airflow has not finished deciding (queued, running, deferred, up for reschedule): a try
still in progress is the lease's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_bfx.catalog.codes import ExecutionStatus as St
from airflow_provider_bfx.catalog.codes import NextLoadStatus as Nls
from airflow_provider_bfx.catalog.codes import parse_status
from airflow_provider_bfx.catalog.results import RunAwaitingEvidence, RunEvidence

#: Airflow task-instance states that end a try (string values of ``TaskInstanceState``).
SUCCESS = "success"
FAILED = "failed"
UP_FOR_RETRY = "up_for_retry"
SKIPPED = "skipped"
UPSTREAM_FAILED = "upstream_failed"
REMOVED = "removed"

#: Airflow DAG-run states that end a run.
RUN_SUCCESS = "success"
RUN_FAILED = "failed"


@dataclass(frozen=True)
class TaskAdoption:
    """What a task row becomes when Airflow's record of its try disagrees with it."""

    status: St
    next_load_status: Nls
    airflow_state: str
    #: Shown in the log line and in the ExecutionError row the store writes.
    reason: str


def adopt_task(
    current: St,
    airflow_state: str | None,
    *,
    batch_failed: bool,
    copy_landed: bool,
) -> TaskAdoption | None:
    """The row of the LATEST try of one task instance, against Airflow's state of it.

    * success: the work is done. A row that is active, failed or aborted becomes ``S`` (``C``
      for the next run when its batch failed, so a resumed run skips it, as it would had the
      callback been heard). A ``C`` row (skipped as completed, or replayed) already agrees.
    * failed / up_for_retry: an active row, or a success marked failed by hand, becomes ``F``
      with ``D`` when the copy step had landed, else ``R``.
    * skipped by hand, upstream_failed, removed: an active row ran nothing Airflow counts; it
      becomes ``C``/``P`` (skipped, decides nothing) or ``A``/``R`` (aborted, run it again).
    * anything else: no opinion yet.
    """
    if airflow_state == SUCCESS:
        if current in (St.SUCCEEDED, St.SKIPPED):
            return None
        return TaskAdoption(
            St.SUCCEEDED,
            Nls.SKIP if batch_failed else Nls.PENDING,
            airflow_state,
            f"Airflow recorded success; the catalog had {current.value}",
        )
    if airflow_state in (FAILED, UP_FOR_RETRY):
        if not (current.is_active or current is St.SUCCEEDED):
            return None
        return TaskAdoption(
            St.FAILED,
            Nls.COMPUTE_ONLY if copy_landed else Nls.RETRY,
            airflow_state,
            f"Airflow recorded {airflow_state}; the catalog had {current.value}",
        )
    if not current.is_active:
        return None
    if airflow_state == SKIPPED:
        return TaskAdoption(
            St.SKIPPED, Nls.PENDING, airflow_state, "Airflow recorded skipped; nothing completed"
        )
    if airflow_state in (UPSTREAM_FAILED, REMOVED):
        return TaskAdoption(
            St.ABORTED,
            Nls.COMPUTE_ONLY if copy_landed else Nls.RETRY,
            airflow_state,
            f"Airflow recorded {airflow_state}; the try never finished",
        )
    return None


def disagrees(waiting: RunAwaitingEvidence, found: RunEvidence) -> bool:
    """Whether adopting ``found`` would change one of the task rows ``waiting`` carries (its
    ``task_rows``; without them, assume it would). Whether :func:`adopt_task` changes a row
    depends on its status and Airflow's state only: ``batch_failed`` and ``copy_landed``
    choose the NextLoadStatus of a change, never whether there is one."""
    if waiting.task_rows is None:
        return True
    return any(
        adopt_task(
            parse_status(row.status_code, row=f"Execution row ExecutionID={row.execution_id}"),
            found.task_states.get((str(row.task_id), row.map_index)),
            batch_failed=False,
            copy_landed=False,
        )
        is not None
        for row in waiting.task_rows
    )


def adopt_batch(current: St, dag_run_state: str | None, *, closed: bool) -> bool | None:
    """Whether the batch row must be ended as succeeded (True) or failed (False), or None.

    A DAG run that Airflow ended (by the scheduler, or by hand) ends its batch the same way,
    also when the batch already carries that status but was never closed (a final failure
    fails the batch without closing it; the run's end closes it). ``C`` (package disabled) is
    left alone: its run did nothing routed.
    """
    if current is St.SKIPPED:
        return None
    if dag_run_state == RUN_SUCCESS and (current is not St.SUCCEEDED or not closed):
        return True
    if dag_run_state == RUN_FAILED and (current is not St.FAILED or not closed):
        return False
    return None
