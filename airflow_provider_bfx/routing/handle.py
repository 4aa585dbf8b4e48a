"""The execution handle (``context["bfx"]``) and what the gate decided for each try.

The gate and the callbacks of one try run in the same process: the task process under an
executor, the ``dags test`` process in a test. The gate therefore records its outcome for the try
in a process-level table keyed by the try (:class:`TryKey`), and the callbacks look it up there
(decision 0042). The table also says what NOT to end: a try the gate skipped (its row is already
terminal), refused, served from a replay, or let run unrouted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import CheckpointType, ExecutionStatus

if TYPE_CHECKING:
    from airflow_provider_bfx.catalog.store import CatalogStore
    from airflow_provider_bfx.routing.lease import LeaseKeeper

#: NodeKey of the checkpoint that records a task's return value for replay.
RETURN_VALUE_NODE = "return_value"


@dataclass(frozen=True)
class TryKey:
    """One try of one task instance: the same fields as the row's ``ExternalExecutionID``."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int

    @staticmethod
    def of(ti: Any) -> TryKey:
        map_index = getattr(ti, "map_index", None)
        return TryKey(
            dag_id=str(ti.dag_id),
            run_id=str(ti.run_id),
            task_id=str(ti.task_id),
            map_index=keys.UNMAPPED if map_index is None else int(map_index),
            try_number=int(getattr(ti, "try_number", 1) or 1),
        )

    @property
    def external_id(self) -> str:
        return keys.task_external_id(
            self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number
        )


@dataclass(eq=False)
class ExecutionHandle:
    """What a running task knows about its catalog execution (``context["bfx"]``).

    ``status`` is ``E`` (a normal run), ``R`` (a retry of work that failed in this lineage) or
    ``D`` (a compute-only restart); ``audit_id`` is the audit ID the data this execution processes
    was landed under: its own ``execution_id``, or on a ``D`` restart the original landed one.
    """

    execution_id: int
    batch_execution_id: int
    original_execution_id: int
    status: ExecutionStatus
    audit_id: int | None
    attempt_number: int
    scope_key: str
    item_fingerprint: str = keys.NO_ITEM
    operator_fingerprint: str | None = None
    store: CatalogStore | None = field(default=None, repr=False)
    lease: LeaseKeeper | None = field(default=None, repr=False)

    def _store(self) -> CatalogStore:
        if self.store is None:
            raise RuntimeError(
                f"execution {self.execution_id}: this handle has no catalog store attached"
            )
        return self.store

    def checkpoint(self, node: str, output: Any) -> None:
        """Record ``output`` (JSON-serialisable) as this task's ``NODE_OUTPUT`` for ``node``.

        The checkpoint survives retries and resumed runs of this lineage (its scope is the
        lineage, the task and the item, not this execution)."""
        if node == RETURN_VALUE_NODE:
            raise ValueError(
                f"checkpoint node {RETURN_VALUE_NODE!r} is reserved: the routing records the"
                " task's return value under it"
            )
        self._store().write_checkpoint(
            execution_id=self.execution_id,
            scope_key=self.scope_key,
            node=node,
            payload=output,
            item_fingerprint=self.item_fingerprint or None,
            operator_fingerprint=self.operator_fingerprint,
        )

    def get_checkpoint(self, node: str, default: Any = None) -> Any:
        """The output recorded for ``node`` in this lineage, or ``default``."""
        found = self._store().read_checkpoints(self.scope_key, CheckpointType.NODE_OUTPUT, node)
        return found[-1].payload if found else default

    def log_row_count(self, object_name: str, count_type: str, rows: int) -> None:
        """Append a row count (``bfx.ExecutionRowCount``) for this execution."""
        self._store().log_row_counts(self.execution_id, [(object_name, count_type, rows)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "batch_execution_id": self.batch_execution_id,
            "original_execution_id": self.original_execution_id,
            "status": self.status.value,
            "audit_id": self.audit_id,
        }


class Outcome(str, Enum):
    """What the gate did with one try."""

    RUN = "run"  # routed and running: the callbacks end its execution
    RERUN_FOR_OUTPUT = "rerun_for_output"  # completed (C) but run again for a missing output
    SKIPPED = "skipped"  # the gate skipped it (C skip, package disabled, upstream skipped)
    REPLAYED = "replayed"  # served as success with its recorded output; its row is C
    REFUSED = "refused"  # the gate failed it before any work
    UNROUTED = "unrouted"  # catalog unavailable and on_catalog_unavailable = run

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GateRecord:
    outcome: Outcome
    handle: ExecutionHandle | None = None


_records: dict[TryKey, GateRecord] = {}
_records_lock = threading.Lock()


def remember(key: TryKey, record: GateRecord) -> None:
    with _records_lock:
        _records[key] = record


def recall(key: TryKey) -> GateRecord | None:
    with _records_lock:
        return _records.get(key)


def forget(key: TryKey) -> GateRecord | None:
    with _records_lock:
        return _records.pop(key, None)
