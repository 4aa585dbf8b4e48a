"""Skip ahead (decision 0106): a resumed run's completed tasks skipped with no try of their own.

``start`` is the run's only first task: its gate creates the batch and skips the completed
tasks ahead. ``extract`` has ``multiple_outputs`` (its keys are replayed as XComs too);
``choose`` is a branch (it decides the run's shape: never skipped ahead, it decides again);
``check`` (default ``all_success``, restored by the gate) pulls ``extract``'s keys and ``left``'s
value, and fails when ``dag_run.conf`` says ``{"fail": true}``.
Every real execution appends its task id to ``$BFX_EXAMPLE_COPY_DIR/executions``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task


def _note(what: str) -> None:
    folder = os.environ.get("BFX_EXAMPLE_COPY_DIR")
    if folder:
        with open(Path(folder) / "executions", "a", encoding="utf-8") as out:
            out.write(what + "\n")


@task
def start() -> str:
    _note("start")
    return "s"


@task(multiple_outputs=True)
def extract(token: str) -> dict[str, Any]:
    _note("extract")
    return {"rows": 3, "name": f"orders-{token}"}


@task.branch
def choose(token: str) -> str:
    _note("choose")
    return "left"


@task
def left() -> str:
    _note("left")
    return "L"


@task
def right() -> str:
    _note("right")
    return "R"


@task
def check(rows: int, name: str, side: str | None, **context: Any) -> str:
    if (context["dag_run"].conf or {}).get("fail"):
        raise RuntimeError("check: injected failure")
    _note("check")
    return f"{name}:{rows}:{side}"


with DAG(
    dag_id="bfx_e2e_skip_ahead",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    token = start()
    data = extract(token)
    branch = choose(token)
    side_left, side_right = left(), right()
    branch >> [side_left, side_right]
    check(data["rows"], data["name"], side_left)
