"""Checkpoints survive every kind of retry (DESIGN.md §5 scope keys).

``staged`` lists its "files" once and checkpoints them, then does its work; it fails while
``$BFX_E2E_FAIL`` names a file that exists and holds ``always``, or ``first`` on try 1 only.
Every listing it really does is appended to ``$BFX_E2E_LISTINGS``, so a test counts them.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, get_current_context, task


@task(retries=1, retry_delay=timedelta(seconds=0))
def staged(bfx) -> dict[str, Any]:  # noqa: ANN001 - "bfx" is a context key
    try_number = int(get_current_context()["ti"].try_number)
    files = bfx.get_checkpoint("list_files")
    if files is None:
        with Path(os.environ["BFX_E2E_LISTINGS"]).open("a") as listings:
            listings.write(f"listed in try {try_number} of execution {bfx.execution_id}\n")
        files = {"files": ["a.parquet", "b.parquet"], "listed_by": bfx.execution_id}
        bfx.checkpoint("list_files", files)
    flag = Path(os.environ["BFX_E2E_FAIL"])
    mode = flag.read_text().strip() if flag.exists() else ""
    if mode == "always" or (mode == "first" and try_number == 1):
        raise RuntimeError(f"load failed in try {try_number}")
    return {**files, "used_in_execution": bfx.execution_id}


with DAG(
    dag_id="bfx_e2e_checkpoint_scope",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
):
    staged()
