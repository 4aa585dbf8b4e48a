"""A mapped task over a literal list: items are resumed by identity, never by position.

The list is read from ``$BFX_E2E_ITEMS`` (JSON, default ``[1, 2, 3]``) when the file is parsed,
so a test can reorder or grow it between runs; ``{"fail_items": [x]}`` in the run's conf fails
the instance whose input is ``x``. Every real execution appends ``item:<x>`` to
``$BFX_EXAMPLE_COPY_DIR/executions``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

ITEMS = json.loads(os.environ.get("BFX_E2E_ITEMS") or "[1, 2, 3]")


@task
def process(x: int, **context: Any) -> int:
    if x in ((context["dag_run"].conf or {}).get("fail_items") or []):
        raise RuntimeError(f"item {x}: injected failure")
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(f"item:{x}\n")
    return x * 10


@task
def summary(values: list[int]) -> list[int]:
    return sorted(values)


with DAG(
    dag_id="bfx_e2e_items",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    summary(process.expand(x=ITEMS))
