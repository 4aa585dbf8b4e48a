"""A routed mapped task over a literal list, for the deployment tests: ``process.expand(x=ITEMS)``
then ``summary``.

``ITEMS`` is read, when the file is parsed, from ``$BFX_DEPLOY_LEDGER_DIR/items.json`` (default
``[1, 2, 3]``), so a test can reorder the list between runs (and wait for the DAG processor to
parse it again). ``{"fail_items": [x]}`` in the run's conf fails the instance whose input is
``x``. Every real execution appends ``<run_id> item:<x>`` to
``$BFX_DEPLOY_LEDGER_DIR/bfx_deploy_items.ledger``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

_FOLDER = Path(os.environ.get("BFX_DEPLOY_LEDGER_DIR", "."))
_ITEMS_FILE = _FOLDER / "items.json"
ITEMS = json.loads(_ITEMS_FILE.read_text()) if _ITEMS_FILE.exists() else [1, 2, 3]


@task
def process(x: int, **context: Any) -> int:
    if x in ((context["dag_run"].conf or {}).get("fail_items") or []):
        raise RuntimeError(f"item {x}: injected failure")
    with open(_FOLDER / "bfx_deploy_items.ledger", "a", encoding="utf-8") as out:
        out.write(f"{context['run_id']} item:{x}\n")
    return x * 10


@task
def summary(values: list[int], **context: Any) -> list[int]:
    with open(_FOLDER / "bfx_deploy_items.ledger", "a", encoding="utf-8") as out:
        out.write(f"{context['run_id']} summary:{sorted(values)}\n")
    return sorted(values)


with DAG(
    dag_id="bfx_deploy_items",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    summary(process.expand(x=ITEMS))
