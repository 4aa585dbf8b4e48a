"""What the catalog is asked (a DAG run, a try) and what it answers. Plain values, no SQL, no
Airflow: routing builds the requests and reads the results, never the catalog's rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import (
    ExecutionStatus,
    NextLoadStatus,
    VersionMismatchPolicy,
)
from airflow_provider_bfx.catalog.liveness import owner_of_this_process
from airflow_provider_bfx.catalog.machine import ResumeScope, Run


def default_lease_owner() -> str:
    return owner_of_this_process()


@dataclass(frozen=True)
class BatchSpec:
    """A DAG run, as the catalog needs to know it."""

    dag_id: str
    run_id: str
    logical_date: datetime | None = None
    full_rerun: bool = False
    resume_scope: ResumeScope = ResumeScope.LINEAGE
    parent_execution_id: int | None = None  # the triggering task's execution (nested batch)
    retry_limit: int | None = None  # overrides Package.RetryLimit when set
    # Settings a DAG package row gets when it is first registered ([bfx] retry_limit and
    # max_resume_age); an existing row keeps what is in the catalog (a DBA may have edited it).
    default_retry_limit: int | None = None
    default_max_resume_age: int | None = None

    @property
    def external_id(self) -> str:
        return keys.batch_external_id(self.dag_id, self.run_id)


@dataclass(frozen=True)
class TaskSpec:
    """One try of one task instance."""

    batch: BatchSpec
    task_id: str
    map_index: int = keys.UNMAPPED
    try_number: int = 1
    item_fingerprint: str = keys.NO_ITEM
    operator_fingerprint: str | None = None
    policy: VersionMismatchPolicy = VersionMismatchPolicy.WARN
    decides_shape: bool = False
    lease_owner: str | None = None
    lease_seconds: float = 60.0
    #: The caller expects this start not to be a first start in its lineage, which the
    #: guarded INSERT covers (decision 0121): a task with no upstream task (it may be the first
    #: of its run and create the batch), or one whose earlier runs in the lineage hold rows of
    #: it (a resumed run). The start then reads its facts at once, instead of first trying the
    #: guarded INSERT and paying a round trip for a miss. Only the cost depends on it.
    read_first: bool = False

    @property
    def external_id(self) -> str:
        return keys.task_external_id(
            self.batch.dag_id, self.batch.run_id, self.task_id, self.map_index, self.try_number
        )


@dataclass(frozen=True)
class TaskStarted:
    """What a task start decided; the execution handle is built from it."""

    execution_id: int
    batch_execution_id: int
    original_execution_id: int
    lineage_id: int
    package_id: int
    status: ExecutionStatus
    next_load_status: NextLoadStatus
    audit_id: int | None
    attempt_number: int
    run: Run
    reason: str
    scope_key: str
    prior_execution_id: int | None = None
    failure_message: str | None = None
    log_lines: tuple[str, ...] = ()
    repeated: bool = False  # the same key was started before: this is that row, unchanged
    #: This start found its run without a batch, and the batch resumes an older lineage: the
    #: start that skips the run's completed tasks ahead (decision 0106).
    resumed_batch: bool = False


@dataclass(frozen=True)
class SkippedAhead:
    """A task of a resumed run that skip ahead wrote as completed (``C``) before it started:
    its row, and the return value it recorded when it completed (to be replayed as its
    XCom)."""

    task_id: str
    execution_id: int
    #: The ``BFX_SKIP_COMPLETED`` line of its decision.
    line: str
    has_output: bool
    output: Any = None


@dataclass(frozen=True)
class TaskEnded:
    execution_id: int
    status: ExecutionStatus
    next_load_status: NextLoadStatus
    changed: bool
    batch_failed: bool = False
    log_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchEnded:
    execution_id: int
    status: ExecutionStatus
    next_load_status: NextLoadStatus
    changed: bool


@dataclass(frozen=True)
class RunAwaitingEvidence:
    """A batch of a DAG's latest lineage whose rows may disagree with what Airflow recorded
    (DESIGN.md §4, evidence)."""

    run_id: str
    batch_execution_id: int
    #: Closed cleanly (S, ended, no active row): only the DAG run's state needs asking.
    settled: bool
    task_ids: tuple[str, ...]
    #: The asking run's own batch already exists in this lineage: the start that created it
    #: read the whole run's evidence and chose the lineage, so this start's decision reads
    #: only its own task's rows of this run (``task_ids`` is then empty: ask for the own task).
    batch_started: bool = False
    #: With ``batch_started`` and the asking task named: that task's latest rows in this
    #: batch, so that Airflow's answer is adopted only where it disagrees with one of them.
    task_rows: tuple[ExecutionRecord, ...] | None = None


@dataclass(frozen=True)
class RunEvidence:
    """Airflow's record of one DAG run: its state and the state of each task instance, keyed
    by (task_id, map_index) with ``map_index`` -1 for an unmapped task."""

    run_id: str
    dag_run_state: str | None
    task_states: Mapping[tuple[str, int], str | None]


@dataclass(frozen=True)
class ExpiredLease:
    execution_id: int
    next_load_status: NextLoadStatus
    log_line: str


@dataclass(frozen=True)
class Checkpoint:
    execution_id: int
    node: str
    iteration_key: str
    item_fingerprint: str | None
    operator_fingerprint: str | None
    payload: Any  # the JSON value, or payload.UNRECORDED: completed, output not stored (NULL)


@dataclass(frozen=True)
class ExecutionRecord:
    """One ``Execution`` row as the Airflow side reads it: named fields instead of the row's
    columns, so the catalog's row shape does not leak into routing. The two codes are the
    raw column values (parse them with :func:`~.codes.parse_status`, which names a row
    holding an unknown code)."""

    execution_id: int
    parent_execution_id: int | None
    original_execution_id: int | None
    lineage_id: int | None
    status_code: str
    next_load_status_code: str
    audit_id: int | None
    attempt_number: int
    task_id: str | None
    map_index: int
    lease_owner: str | None

    @classmethod
    def of_row(cls, row: Any) -> ExecutionRecord:
        return cls(
            execution_id=int(row.ExecutionID),
            parent_execution_id=row.ParentExecutionID,
            original_execution_id=row.OriginalExecutionID,
            lineage_id=row.LineageID,
            status_code=row.ExecutionStatus,
            next_load_status_code=row.NextLoadStatus,
            audit_id=row.AuditID,
            attempt_number=row.AttemptNumber,
            task_id=row.TaskId,
            map_index=row.MapIndex,
            lease_owner=row.LeaseOwner,
        )
