"""Resume a failed run in place: Airflow's own "clear the failed tasks", checked by the catalog.

The other way to resume is a *new* DAG run: its batch resumes the failed lineage and every
task already completed ends skipped by its gate. That costs a task process per skipped task.
Clearing the failed run's failed and ``upstream_failed`` task instances (what Airflow's UI
calls "clear failed tasks") starts nothing for the tasks that succeeded. The catalog treats
the cleared run as "same run again" (DESIGN §4, batch start): the batch row reopens as ``R``,
and each cleared task is decided by its own failed row (``BFX_RETRY``, or
``BFX_COMPUTE_ONLY_RESTART`` when its copy step landed). Decision 0102 says when to use which.

This module holds the checks that make the clear safe, and nothing else:

* the run must be the DAG's **latest batch** in the catalog: clearing an older run while a
  newer batch has already resumed (or restarted) the lineage would let two batches claim it;
* that batch must be **failed** (``F``) in the catalog, and the Airflow run **failed** too:
  a running run has nothing to clear, a succeeded one nothing to resume;
* at least one task instance must be failed or ``upstream_failed``.

A refusal raises :class:`ResumeRefused` with what is wrong and what to do, before anything
changes. The clear itself is Airflow's (``SerializedDAG.clear`` with ``only_failed`` and
``clear_task_instances``, as the REST API's ``clearTaskInstances`` does), in one metadata-DB
transaction. It runs where the metadata DB is reachable: the API server (``POST
/bfx/api/v1/dags/{dag_id}/resume``) or the ``bfx resume`` CLI on an Airflow machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_bfx.catalog import views
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.exceptions import BfxError


class ResumeRefused(BfxError):
    """The run cannot be resumed in place; the message says why and what to do instead."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class InPlaceResume:
    """What a resume in place cleared (or, with ``dry_run``, would clear)."""

    dag_id: str
    run_id: str
    batch_execution_id: int
    #: ``task_id``, or ``task_id[map_index]`` for a mapped task instance, sorted.
    cleared: list[str]
    dry_run: bool

    @property
    def message(self) -> str:
        verb = "would clear" if self.dry_run else "cleared"
        return (
            f"run {self.run_id} of {self.dag_id} (batch execution {self.batch_execution_id}):"
            f" {verb} {len(self.cleared)} failed task instance(s): {', '.join(self.cleared)};"
            " the tasks that succeeded keep their state and start nothing"
        )

    @property
    def confirmation(self) -> str:
        """What the recovery view asks the user to confirm (of a dry run)."""
        return (
            f"Airflow clears {len(self.cleared)} failed task instance(s) of run {self.run_id}:"
            f" {', '.join(self.cleared)}. They run again in that run, each decided by its failed"
            " row (retry, or compute-only restart); the tasks that succeeded keep their state"
            " and start nothing. (A new run would instead resume the lineage as planned above.)"
        )


def resume_failed_run(
    store: CatalogStore, dag_id: str, run_id: str | None = None, *, dry_run: bool = False
) -> InPlaceResume:
    """Clear the failed task instances of ``dag_id``'s failed run (default: the run of the
    DAG's latest batch) so that Airflow runs them again in that run. Raises
    :class:`ResumeRefused` (nothing changed) when the run cannot be resumed in place."""
    batch = _latest_failed_batch(store, dag_id, run_id)
    cleared = _clear_failed(dag_id, batch.run_id, dry_run=dry_run)
    return InPlaceResume(dag_id, batch.run_id, batch.execution_id, cleared, dry_run)


def _latest_failed_batch(
    store: CatalogStore, dag_id: str, run_id: str | None
) -> views.BatchSummary:
    latest = views.batch_page(store, dag_id, limit=1).batches
    if not latest:
        raise ResumeRefused(
            f"DAG {dag_id!r} has no batch in the catalog: nothing to resume (trigger a run)",
            not_found=True,
        )
    batch = latest[0]
    if run_id is not None and run_id != batch.run_id:
        raise ResumeRefused(
            f"run {run_id!r} is not the latest batch of {dag_id!r} in the catalog (the latest"
            f" is run {batch.run_id!r}, status {batch.status}): only the latest run resumes in"
            " place; trigger a new run to resume the lineage"
        )
    if batch.status != "F":
        hint = (
            "it is still open: wait until Airflow has ended the run"
            if batch.status in ("E", "R", "D")
            else "nothing to resume"
        )
        raise ResumeRefused(
            f"the latest batch of {dag_id!r} (run {batch.run_id!r}, execution"
            f" {batch.execution_id}) has ExecutionStatus {batch.status}, not F: {hint}"
        )
    return batch


def _clear_failed(dag_id: str, run_id: str, *, dry_run: bool) -> list[str]:
    """Airflow's "clear failed tasks" of one run, in one metadata-DB transaction."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        runs = DagRun.find(dag_id=dag_id, run_id=run_id, session=session)
        if not runs:
            raise ResumeRefused(
                f"Airflow has no run {run_id!r} of DAG {dag_id!r} (deleted?): trigger a new"
                " run to resume the lineage",
                not_found=True,
            )
        dag_run = runs[0]
        if dag_run.state != DagRunState.FAILED:
            raise ResumeRefused(
                f"Airflow's run {run_id!r} of {dag_id!r} is {dag_run.state}, not failed:"
                " only a failed run is resumed in place"
            )
        dag = DBDagBag().get_dag_for_run(dag_run, session=session)
        if dag is None:
            raise ResumeRefused(
                f"Airflow has no serialized version of DAG {dag_id!r} for run {run_id!r}",
                not_found=True,
            )
        tis: list[Any] = list(
            dag.clear(run_id=run_id, only_failed=True, dry_run=True, session=session)
        )
        if not tis:
            raise ResumeRefused(
                f"run {run_id!r} of {dag_id!r} has no failed or upstream_failed task instance"
                " to clear"
            )
        if not dry_run:
            clear_task_instances(tis, session, DagRunState.QUEUED)
        return sorted(
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]" for ti in tis
        )
