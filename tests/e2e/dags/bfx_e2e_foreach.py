"""A long task that resumes inside itself: ``bfx.foreach`` over 100 tables (DESIGN.md §5).

``load_tables`` copies 100 tables, appending each table it works on to ``$BFX_E2E_WORK``. While
the file ``$BFX_E2E_BREAK`` exists, the table named in it fails (a lost connection at table 62).
``publish`` runs after it. The second run of the DAG resumes the failed lineage: ``extract`` is
skipped as completed, and ``load_tables`` skips the tables the first run finished.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

TABLES = [f"dbo.table_{n:03d}" for n in range(1, 101)]


@task
def extract() -> list[str]:
    with Path(os.environ["BFX_E2E_WORK"]).open("a") as work:
        work.write("extract\n")
    return TABLES


@task
def load_tables(tables: list[str], bfx) -> int:  # noqa: ANN001 - "bfx" is a context key
    broken = Path(os.environ["BFX_E2E_BREAK"])
    fails_at = broken.read_text().strip() if broken.exists() else None
    done = 0
    with Path(os.environ["BFX_E2E_WORK"]).open("a") as work:
        for table in bfx.foreach(
            [{"name": t, "rows": 10} for t in tables], key=lambda t: t["name"]
        ):
            if table["name"] == fails_at:
                raise ConnectionError(f"lost the connection while loading {fails_at}")
            work.write(table["name"] + "\n")
            work.flush()
            bfx.log_row_count(table["name"], "inserted", table["rows"])
            done += 1
    return done


@task
def publish(loaded: int) -> None:
    with Path(os.environ["BFX_E2E_WORK"]).open("a") as work:
        work.write(f"publish {loaded}\n")


with DAG(
    dag_id="bfx_e2e_foreach",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["bfx"],
    default_args={"retries": 0},
):
    publish(load_tables(extract()))
