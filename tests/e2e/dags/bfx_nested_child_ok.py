"""A child DAG that succeeds: ``extract >> load``, triggered by ``bfx_nested_parent``.

Each task appends ``child_ok:<task>:<conf source>`` to ``$BFX_EXAMPLE_COPY_DIR/executions``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task


def _record(name: str, context: dict[str, Any]) -> None:
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    source = (context["dag_run"].conf or {}).get("source")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(f"child_ok:{name}:{source}\n")


@task
def extract(**context: Any) -> None:
    _record("extract", context)


@task
def load(**context: Any) -> None:
    _record("load", context)


with DAG(
    dag_id="bfx_nested_child_ok",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
) as dag:
    extract() >> load()
