"""A batch whose long task is killed mid-work and resumed from its checkpoints.

``extract`` (quick) -> ``load`` (``$BFX_CRASH_CHUNKS`` chunks, default 8) -> ``publish``.

``load`` processes its chunks in order. For each chunk it first asks its checkpoints
(``bfx.get_checkpoint("chunk-<i>")``) and passes over a chunk already done in this lineage;
otherwise it works on it (sleeps ``$BFX_CRASH_CHUNK_SECONDS``, default 0.3), appends
``chunk-<i> <execution_id>`` to the work file, then records the checkpoint ``chunk-<i>``. So the
work file is exactly the work done: a chunk that appears there twice was processed twice. A
process killed between the append and the checkpoint (a few milliseconds per chunk) redoes that
one chunk; a kill at any other moment redoes nothing.

While the file ``$BFX_CRASH_DIR/hold`` exists, ``load`` waits before its next chunk (at most
60 s): a test keeps the task running, lease live, for as long as it needs. ``extract`` and
``publish`` append their task id and execution id to the same work file,
``$BFX_CRASH_DIR/work``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

HOLD_SECONDS = 60.0


def _folder() -> Path:
    return Path(os.environ["BFX_CRASH_DIR"])


def _work(line: str) -> None:
    with open(_folder() / "work", "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def _hold() -> None:
    hold = _folder() / "hold"
    deadline = time.monotonic() + HOLD_SECONDS
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@task
def extract(bfx: Any = None) -> int:  # the execution handle: "bfx" is a context key
    _work(f"extract {bfx.execution_id}")
    return int(os.environ.get("BFX_CRASH_CHUNKS") or "8")


@task
def load(chunks: int, bfx: Any = None) -> dict[str, Any]:
    seconds = float(os.environ.get("BFX_CRASH_CHUNK_SECONDS") or "0.3")
    done_here = []
    for i in range(chunks):
        node = f"chunk-{i}"
        if bfx.get_checkpoint(node) is not None:
            continue  # done by an earlier execution of this lineage
        _hold()
        time.sleep(seconds)  # the work on this chunk
        _work(f"{node} {bfx.execution_id}")
        bfx.checkpoint(node, {"rows": 100})
        done_here.append(i)
    bfx.log_row_count("dw.fact_sales", "Insert", 100 * len(done_here))
    return {"chunks": chunks, "done_here": done_here}


@task
def publish(loaded: dict[str, Any], bfx: Any = None) -> int:
    _work(f"publish {bfx.execution_id}")
    return int(loaded["chunks"])


with DAG(
    dag_id="bfx_crash_recovery",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    publish(load(extract()))  # type: ignore[arg-type]  # XComArgs, resolved at run time
