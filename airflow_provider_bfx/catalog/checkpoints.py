"""Checkpoints (a node's output, a foreach loop's progress) and row counts. No Airflow here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from airflow_provider_bfx.catalog.codes import CheckpointType, CorruptRowError
from airflow_provider_bfx.catalog.compiled import CompiledStatement, compiled
from airflow_provider_bfx.catalog.payload import UNRECORDED, decode_payload, encode_payload
from airflow_provider_bfx.catalog.results import Checkpoint
from airflow_provider_bfx.catalog.txn import Catalog

#: NodeKey of the ``NODE_OUTPUT`` checkpoint that records a task's return value for replay.
RETURN_VALUE_NODE = "return_value"


def payload_text(payload: Any, node: str) -> str | None:
    """The ``Payload`` column of a checkpoint: standard JSON (no NaN or Infinity), else
    :class:`~.payload.UnrecordablePayload` names the value. ``UNRECORDED``: NULL, the
    "completed, output not stored" marker. Encoded before any transaction starts."""
    return None if payload is UNRECORDED else encode_payload(payload, node=node)


def write_checkpoint_txn(
    cat: Catalog,
    conn: Connection,
    *,
    execution_id: int,
    scope_key: str,
    node: str,
    text: str | None,
    checkpoint_type: CheckpointType = CheckpointType.NODE_OUTPUT,
    iteration_key: str = "",
    item_fingerprint: str | None = None,
    operator_fingerprint: str | None = None,
) -> None:
    """Write (or overwrite) one checkpoint whose payload :func:`payload_text` encoded: an
    UPDATE of the row with its key, else an INSERT (both compiled once per process,
    :mod:`.compiled`; a task's return value is one of these at every task end)."""
    values = {
        "ExecutionID": execution_id,
        "ItemFingerprint": item_fingerprint,
        "OperatorFingerprint": operator_fingerprint,
        "Payload": text,
        "CreatedAt": cat.clock(),
    }
    key = {
        "ScopeKey": scope_key,
        "CheckpointType": checkpoint_type.value,
        "NodeKey": node,
        "IterationKey": iteration_key,
    }
    if overwrite(cat).execute(conn, {f"p_{k}": v for k, v in {**key, **values}.items()}):
        return
    first_write(cat).execute(conn, {**key, **values})


_KEY_COLUMNS = ("ScopeKey", "CheckpointType", "NodeKey", "IterationKey")
_VALUE_COLUMNS = ("ExecutionID", "ItemFingerprint", "OperatorFingerprint", "Payload", "CreatedAt")


def overwrite(cat: Catalog) -> CompiledStatement:
    """The UPDATE of a checkpoint by its key (parameters ``p_<column>``)."""

    def build() -> Any:
        C = cat.s.ExecutionCheckpoint
        return (
            update(C)
            .where(*(C.c[k] == bindparam(f"p_{k}") for k in _KEY_COLUMNS))
            .values({k: bindparam(f"p_{k}") for k in _VALUE_COLUMNS})
        )

    return compiled(cat, "checkpoint_overwrite", build)


def first_write(cat: Catalog) -> CompiledStatement:
    """The INSERT of a checkpoint (key and value columns)."""
    return compiled(
        cat,
        "checkpoint_insert",
        lambda: insert(cat.s.ExecutionCheckpoint),
        column_keys=_KEY_COLUMNS + _VALUE_COLUMNS,
    )


def read_checkpoints_txn(
    cat: Catalog,
    conn: Connection,
    scope_key: str,
    checkpoint_type: CheckpointType,
    node: str | None = None,
) -> list[Checkpoint]:
    C = cat.s.ExecutionCheckpoint
    query = select(C).where(C.c.ScopeKey == scope_key, C.c.CheckpointType == checkpoint_type.value)
    if node is not None:
        query = query.where(C.c.NodeKey == node)
    return [
        Checkpoint(
            execution_id=r.ExecutionID,
            node=r.NodeKey,
            iteration_key=r.IterationKey,
            item_fingerprint=r.ItemFingerprint,
            operator_fingerprint=r.OperatorFingerprint,
            payload=decode_payload(r.Payload),
        )
        for r in conn.execute(query.order_by(C.c.CheckpointID))
    ]


def read_foreach_progress_txn(
    cat: Catalog, conn: Connection, scope_key: str, node: str
) -> dict[int, tuple[str, str | None]]:
    """``{iteration index: (item fingerprint, operator fingerprint)}`` of one foreach loop.

    Only the two fingerprint columns, never the payloads: a resume decision over 10,000
    items reads 10,000 short rows through the unique index on the scope."""
    C = cat.s.ExecutionCheckpoint
    query = select(C.c.IterationKey, C.c.ItemFingerprint, C.c.OperatorFingerprint).where(
        C.c.ScopeKey == scope_key,
        C.c.CheckpointType == CheckpointType.FOREACH_PROGRESS.value,
        C.c.NodeKey == node,
    )
    found: dict[int, tuple[str, str | None]] = {}
    for iteration, item_fp, operator_fp in conn.execute(query):
        try:
            index = int(iteration)
        except ValueError:
            raise CorruptRowError(
                f"ExecutionCheckpoint (ScopeKey={scope_key!r}, NodeKey={node!r}) has "
                f"IterationKey={iteration!r}, which is not an iteration index. Delete "
                "the row, or run `bfx reset DAG_ID --task TASK_ID` to start fresh."
            ) from None
        found[index] = (item_fp or "", operator_fp)
    return found


def log_row_counts_txn(
    cat: Catalog, conn: Connection, execution_id: int, counts: Iterable[tuple[str, str, int]]
) -> None:
    """Append row counts (never overwritten: a second count is a second row)."""
    rows = [
        dict(
            ExecutionID=execution_id,
            ObjectName=o,
            CountType=t,
            RecordCount=int(n),
            CreatedAt=cat.clock(),
        )
        for o, t, n in counts
    ]
    if rows:
        conn.execute(insert(cat.s.ExecutionRowCount), rows)
