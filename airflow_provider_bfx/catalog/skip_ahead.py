"""Skip ahead: the completed tasks of a resumed run decided in one transaction, before any of
them starts (issue 12, decision 0106). No Airflow here: routing picks the candidates, replays
their outputs and tells Airflow to skip them.

A resumed run used to start a task process for every task the catalog already knew was done,
only for its gate to end it *skipped*. The first task start of a resumed run now decides the
others as their own gates would: the same facts query and the same :func:`.machine.task_start`
(one home for the rule, :func:`.tasks.decide_start_txn`), under the same batch row lock, and it
writes the rows of those it skips exactly as their gates would have (``C``, the reused
execution named in ``BFX_SKIP_COMPLETED``). A task is left to its own start when:

* it already has a row in this batch (it started, or was skipped ahead, before);
* the machine would not skip it (run, restart compute only, refuse);
* its recorded return value is one the catalog could not hold (decision 0091: it runs again so
  that downstream sees the real value).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select

from airflow_provider_bfx.catalog.checkpoints import RETURN_VALUE_NODE, read_checkpoints_txn
from airflow_provider_bfx.catalog.codes import CheckpointType, Token
from airflow_provider_bfx.catalog.machine import Run
from airflow_provider_bfx.catalog.payload import UNRECORDED
from airflow_provider_bfx.catalog.results import BatchSpec, SkippedAhead, TaskSpec
from airflow_provider_bfx.catalog.tasks import decide_start_txn, start_scope_key, write_start_txn
from airflow_provider_bfx.catalog.txn import Catalog


def skip_ahead_txn(
    cat: Catalog, conn: Connection, batch: BatchSpec, specs: Sequence[TaskSpec]
) -> list[SkippedAhead]:
    """Decide each of ``specs`` (other tasks of ``batch``'s run, not started yet) and write
    the skips; returns the tasks skipped, in ``specs`` order. Nothing is written for a run
    without a batch."""
    E = cat.s.Execution
    batch_id = conn.execute(
        select(E.c.ExecutionID).where(E.c.ExternalExecutionID == batch.external_id)
    ).scalar()
    if batch_id is None:
        return []
    seen = set(
        conn.execute(
            select(E.c.TaskId).where(E.c.ParentExecutionID == batch_id, E.c.TaskId.is_not(None))
        ).scalars()
    )
    now = cat.clock()
    skipped: list[SkippedAhead] = []
    for spec in specs:
        if spec.task_id in seen:
            continue
        decided = decide_start_txn(cat, conn, spec, now)
        if decided is None or decided[1].start.run is not Run.SKIP:
            continue
        found = read_checkpoints_txn(
            cat, conn, start_scope_key(spec, decided), CheckpointType.NODE_OUTPUT, RETURN_VALUE_NODE
        )
        output = found[-1].payload if found else None
        if found and output is UNRECORDED:
            continue  # it runs again for its output (decision 0091)
        started = write_start_txn(cat, conn, spec, decided, now)
        line = next(
            (x for x in started.log_lines if x.startswith(f"[{Token.SKIP_COMPLETED.value}]")),
            started.reason,
        )
        skipped.append(SkippedAhead(spec.task_id, started.execution_id, line, bool(found), output))
    return skipped
