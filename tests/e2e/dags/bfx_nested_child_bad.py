"""A child DAG that fails at its second task while a flag file exists: ``first >> second >>
third``, triggered by ``bfx_nested_parent``.

Each task appends ``child_bad:<task>:<conf source>`` to ``$BFX_EXAMPLE_COPY_DIR/executions``;
``second`` fails while ``$BFX_EXAMPLE_COPY_DIR/child_bad_broken`` exists (an outside cause that
a test fixes between the failed parent run and the resumed one).
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
            out.write(f"child_bad:{name}:{source}\n")


@task
def first(**context: Any) -> None:
    _record("first", context)


@task
def second(**context: Any) -> None:
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder and (Path(folder) / "child_bad_broken").exists():
        raise RuntimeError("second: injected failure (child_bad_broken exists)")
    _record("second", context)


@task
def third(**context: Any) -> None:
    _record("third", context)


with DAG(
    dag_id="bfx_nested_child_bad",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
) as dag:
    first() >> second() >> third()
