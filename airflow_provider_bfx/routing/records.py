"""What the gate decided for each try, for the callbacks of the same try.

The gate and the callbacks of one try run in the same process: the task process under an
executor, the ``dags test`` process in a test. The gate therefore records its outcome for the try
in a process-level table keyed by the try (:class:`TryKey`), and the callbacks look it up there
(decision 0042). The table also says what NOT to end: a try the gate skipped (its row is already
terminal), refused, served from a replay, or let run unrouted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.routing.handle import ExecutionHandle


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
