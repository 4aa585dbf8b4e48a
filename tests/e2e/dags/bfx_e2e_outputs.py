"""Outputs across a resume: a plain consumer, an .expand() over a producer, mapped items.

``dag_run.conf``: ``{"fail_tasks": [task_id, ...]}`` fails those tasks; ``{"fail_items": [x]}``
fails the ``fan`` instances whose input is ``x``; ``{"items": [...]}`` is the list ``make_list``
returns (default ``[1, 2, 3]``). Every real execution appends ``task_id[:item]`` to
``$BFX_EXAMPLE_COPY_DIR/executions`` so a test can tell what ran again.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task


def _note(context: dict[str, Any], what: str) -> None:
    conf = context["dag_run"].conf or {}
    if context["ti"].task_id in (conf.get("fail_tasks") or []):
        raise RuntimeError(f"{what}: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(what + "\n")


@task
def produce(**context: Any) -> list[int]:
    _note(context, "produce")
    return [10, 20, 30]


@task
def consume(values: list[int], **context: Any) -> int:
    _note(context, "consume")
    return sum(values)


@task
def make_list(**context: Any) -> list[int]:
    _note(context, "make_list")
    return list((context["dag_run"].conf or {}).get("items") or [1, 2, 3])


@task
def fan(x: int, **context: Any) -> int:
    conf = context["dag_run"].conf or {}
    if x in (conf.get("fail_items") or []):
        raise RuntimeError(f"fan:{x}: injected failure")
    _note(context, f"fan:{x}")
    return x * 100


@task
def total(values: list[int], **context: Any) -> int:
    _note(context, "total")
    return sum(values)


with DAG(
    dag_id="bfx_e2e_outputs",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    consume(produce())
    total(fan.expand(x=make_list()))
