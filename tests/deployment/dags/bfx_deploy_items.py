"""A routed mapped task over a literal list read when the file is parsed, so that a test can
reorder the list between runs: ``$BFX_DEPLOY_LEDGER_DIR/items.json`` (default ``["a", "b",
"c", "d"]``). ``{"fail_items": [...]}`` in the run's conf fails those instances; every real
execution appends ``<run_id> item:<x>`` to ``bfx_deploy_items.ledger``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

_FOLDER = Path(os.environ.get("BFX_DEPLOY_LEDGER_DIR", "/nonexistent"))
_LIST = _FOLDER / "items.json"
ITEMS = json.loads(_LIST.read_text()) if _LIST.exists() else ["a", "b", "c", "d"]


@task
def process(x: str, **context: Any) -> str:
    if x in ((context["dag_run"].conf or {}).get("fail_items") or []):
        raise RuntimeError(f"item {x}: injected failure")
    with open(_FOLDER / "bfx_deploy_items.ledger", "a", encoding="utf-8") as out:
        out.write(f"{context['run_id']} item:{x}\n")
    return x.upper()


with DAG(
    dag_id="bfx_deploy_items",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    process.expand(x=ITEMS)
