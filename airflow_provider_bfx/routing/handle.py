"""The execution handle: what a running task knows and can do (``context["bfx"]``).

Its checkpoints, ``foreach`` progress and row counts are scoped to the lineage, the task and the
item (never to one execution), so that they survive every kind of retry (DESIGN.md §5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_bfx.catalog import foreach as loops
from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.checkpoints import RETURN_VALUE_NODE as RETURN_VALUE_NODE
from airflow_provider_bfx.catalog.codes import (
    CheckpointType,
    ExecutionStatus,
    Token,
    VersionMismatchPolicy,
    format_token,
)
from airflow_provider_bfx.catalog.payload import UNRECORDED

if TYPE_CHECKING:
    from airflow_provider_bfx.catalog.store import CatalogStore, TaskSpec, TaskStarted
    from airflow_provider_bfx.routing.lease import LeaseKeeper


log = logging.getLogger("airflow_provider_bfx.routing")

T = TypeVar("T")


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
    version_mismatch_policy: VersionMismatchPolicy = VersionMismatchPolicy.WARN
    store: CatalogStore | None = field(default=None, repr=False)
    lease: LeaseKeeper | None = field(default=None, repr=False)
    _loops: int = field(default=0, repr=False)  # foreach loops started, for default names

    @classmethod
    def of_start(
        cls, started: TaskStarted, store: CatalogStore, spec: TaskSpec | None = None
    ) -> ExecutionHandle:
        """The handle of the execution a task start wrote (``spec``: the start's request, for
        the item, the operator fingerprint and the version-mismatch policy)."""
        return cls(
            execution_id=started.execution_id,
            batch_execution_id=started.batch_execution_id,
            original_execution_id=started.original_execution_id,
            status=started.status,
            audit_id=started.audit_id,
            attempt_number=started.attempt_number,
            scope_key=started.scope_key,
            item_fingerprint=spec.item_fingerprint if spec else keys.NO_ITEM,
            operator_fingerprint=spec.operator_fingerprint if spec else None,
            version_mismatch_policy=spec.policy if spec else VersionMismatchPolicy.WARN,
            store=store,
        )

    def _store(self) -> CatalogStore:
        if self.store is None:
            raise RuntimeError(
                f"execution {self.execution_id}: this handle has no catalog store attached"
            )
        return self.store

    def checkpoint(self, node: str, output: Any) -> None:
        """Record ``output`` (standard JSON) as this task's ``NODE_OUTPUT`` for ``node``.

        The checkpoint survives retries and resumed runs of this lineage (its scope is the
        lineage, the task and the item, not this execution). A value JSON cannot hold (a
        ``datetime``, ``NaN``/``Infinity``...) raises ``UnrecordablePayload`` (a ``TypeError``)
        naming the node, the value and where it is: nothing is written, and the task fails
        unless it handles the error, so no node is ever taken for done without its output."""
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
        """The output recorded for ``node`` in this lineage, or ``default``.

        A checkpoint written by a different definition of this task (another operator
        fingerprint) is judged by the version-mismatch policy: ``WARN`` returns it and logs
        ``BFX_FINGERPRINT_MISMATCH``, ``RERUN`` logs and returns ``default`` (the node runs
        again), ``FAIL`` fails the task saying what changed."""
        found = self._store().read_checkpoints(self.scope_key, CheckpointType.NODE_OUTPUT, node)
        if not found or found[-1].payload is UNRECORDED:
            return default
        latest = found[-1]
        if self._reusable(node, latest.operator_fingerprint, latest.execution_id, 1):
            return latest.payload
        return default

    def foreach(
        self,
        items: Iterable[T],
        key: Callable[[T], Any] | None = None,
        *,
        node: str | None = None,
    ) -> Iterator[T]:
        """Iterate ``items``, checkpointing each finished item; a resumed attempt skips the done.

        ``key(item)`` (default: the item itself) identifies an item across runs and must be
        unique and JSON. An item counts as finished when the loop asks for the next one, so an
        item whose body raised, or was left by ``break``, runs again next time. On resume the
        longest contiguous prefix of items whose keys match the recorded progress is skipped
        (``BFX_FOREACH_RESUME skipped=N resumed_at=K``) and the loop restarts at the first
        missing or changed item. ``node`` names the loop (default ``foreach``, then
        ``foreach.2``... for further loops of the same task).

        Keys are checked and the progress is read when this is called, before any item runs."""
        listed = list(items)
        fingerprints = loops.item_fingerprints(listed, key)
        self._loops += 1
        name = node or loops.node_name(self._loops)
        store = self._store()
        recorded = store.read_foreach_progress(self.scope_key, name)
        done: dict[int, str | None] = {}
        foreign = {
            index: writer
            for index, (_, writer) in recorded.items()
            if writer is not None
            and self.operator_fingerprint is not None
            and writer != self.operator_fingerprint
        }
        keep_foreign = not foreign or self._reusable(
            name, next(iter(foreign.values())), None, len(foreign)
        )
        for index, (item_fp, _) in recorded.items():
            if index not in foreign or keep_foreign:
                done[index] = item_fp
        point = loops.resume_point(fingerprints, done)
        if recorded:
            log.info(
                format_token(
                    Token.FOREACH_RESUME,
                    skipped=point.skipped,
                    resumed_at=point.resumed_at,
                    total=point.total,
                    reason=point.reason,
                    node=name,
                    execution_id=self.execution_id,
                )
            )
        return self._loop(listed, fingerprints, key, name, point.resumed_at)

    def _loop(
        self,
        items: list[T],
        fingerprints: list[str],
        key: Callable[[T], Any] | None,
        node: str,
        start: int,
    ) -> Iterator[T]:
        store = self._store()
        for index in range(start, len(items)):
            item = items[index]
            yield item
            # Reached only when the caller asked for the next item: this one is finished.
            store.write_checkpoint(
                execution_id=self.execution_id,
                scope_key=self.scope_key,
                node=node,
                payload={"index": index, "key": key(item) if key is not None else item},
                checkpoint_type=CheckpointType.FOREACH_PROGRESS,
                iteration_key=str(index),
                item_fingerprint=fingerprints[index],
                operator_fingerprint=self.operator_fingerprint,
            )

    def _reusable(self, node: str, recorded: str | None, writer: int | None, rows: int) -> bool:
        """Apply the version-mismatch policy to state written under operator fingerprint
        ``recorded``: True to reuse it, False to discard it; FAIL raises."""
        current = self.operator_fingerprint
        if recorded is None or current is None or recorded == current:
            return True
        policy = self.version_mismatch_policy
        line = format_token(
            Token.FINGERPRINT_MISMATCH,
            policy=policy.value,
            node=node,
            recorded=recorded[:12],
            current=current[:12],
            writer_execution_id=writer,
            checkpoints=rows,
            execution_id=self.execution_id,
        )
        if policy is VersionMismatchPolicy.FAIL:
            raise AirflowFailException(
                f"{line}: checkpoint {node!r} was written by another definition of this task"
                f" (operator fingerprint {recorded[:12]} -> {current[:12]}) and"
                " version_mismatch_policy=FAIL. Revert the change, set the policy to WARN or"
                " RERUN, or run `bfx reset DAG_ID --task TASK_ID` to start this task fresh."
            )
        log.warning(
            "%s: %s",
            line,
            "reusing it" if policy is VersionMismatchPolicy.WARN else "discarding it (rerun)",
        )
        return policy is VersionMismatchPolicy.WARN

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
