"""``bfx demo``: the 50-table story on an embedded SQLite catalog, end to end, in seconds.

Run 1 loads 50 tables and fails at table 48; run 2 resumes: the 47 finished tables are skipped,
table 48 is retried, tables 49 and 50 run for the first time; run 3 starts a fresh lineage.
Every decision is printed next to the catalog row that records it, and the catalog file is kept
so that a person can ``SELECT`` from it afterwards.

This drives the catalog store directly, the way the Airflow gate does for each task; it needs no
Airflow scheduler. (The Airflow-level demo arrives with DAG routing.)
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec

DAG_ID = "warehouse_batch"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the 50-table restart story on an embedded SQLite catalog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to keep the catalog file")
    parser.add_argument("--tables", type=int, default=50, help="tables in the batch (default 50)")
    parser.add_argument("--fail-at", type=int, default=48, help="table that fails in run 1")
    parser.set_defaults(func=run)


def _run(
    store: CatalogStore, run_id: str, tables: list[str], fail_at: str | None
) -> list[tuple[str, Any]]:
    batch = BatchSpec(DAG_ID, run_id)
    out: list[tuple[str, Any]] = []
    failed = False
    for table in tables:
        if failed:
            out.append((table, None))
            continue
        started = store.start_task(TaskSpec(batch, table))
        if started.run is Run.RUN:
            if table == fail_at:
                store.end_task(
                    started.execution_id,
                    TaskOutcome.FINAL_FAILURE,
                    error_type="DemoFailure",
                    error_message=f"{table}: injected failure (bfx demo --fail-at)",
                )
                failed = True
            else:
                store.end_task(started.execution_id, TaskOutcome.SUCCESS)
        out.append((table, started))
    store.end_batch(DAG_ID, run_id, succeeded=not failed)
    return out


def _print_run(store: CatalogStore, title: str, run_id: str, result: list[tuple[str, Any]]) -> None:
    rows = {r.TaskId: r for r in store.executions(DAG_ID, run_id)}
    batch = rows.pop(None)
    print(f"\n== {title} (run_id={run_id})")
    header = ("task", "gate decision", "ExecutionID", "Status/Next", "OriginalExecutionID")
    print(f"{header[0]:<16} {header[1]:<44} {header[2]:>11} {header[3]:>11} {header[4]:>19}")
    for table, started in result:
        if started is None:
            print(f"{table:<16} {'not started (run failed)':<44}")
            continue
        row = rows[table]
        decision = f"{started.run.value} ({started.status.value}: {started.reason})"
        codes = f"{row.ExecutionStatus}/{row.NextLoadStatus}"
        print(
            f"{table:<16} {decision:<44.44} {row.ExecutionID:>11} {codes:>11}"
            f" {row.OriginalExecutionID:>19}"
        )
    print(
        f"batch: ExecutionID={batch.ExecutionID} {batch.ExecutionStatus}/{batch.NextLoadStatus}"
        f" OriginalExecutionID={batch.OriginalExecutionID} AttemptNumber={batch.AttemptNumber}"
    )


def run(args: argparse.Namespace) -> int:
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bfx-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    catalog = directory / "bfx_demo_catalog.db"
    if catalog.exists():
        catalog.unlink()
    url = f"sqlite:///{catalog}"
    engine = create_catalog_engine(url)
    upgrade(engine)
    store = CatalogStore(engine)
    tables = [f"load_table_{i:02d}" for i in range(1, args.tables + 1)]
    fail_at = tables[args.fail_at - 1] if 0 < args.fail_at <= len(tables) else None
    print(f"Embedded SQLite catalog: {catalog}")

    run1 = _run(store, "run_1", tables, fail_at)
    _print_run(store, "Run 1: fails at " + str(fail_at), "run_1", run1)
    run2 = _run(store, "run_2", tables, None)
    _print_run(store, "Run 2: resumes the failed batch", "run_2", run2)
    run3 = _run(store, "run_3", tables, None)

    done_in_run1 = sum(1 for _, s in run1 if s is not None and s.run is Run.RUN) - (
        1 if fail_at else 0
    )
    recopied = sum(
        1
        for (t, s1), (_, s2) in zip(run1, run2, strict=True)
        if s1 is not None
        and s2 is not None
        and s1.run is Run.RUN
        and t != fail_at
        and s2.run is Run.RUN
    )
    statuses = Counter(s.status.value for _, s in run2 if s is not None)
    print("\n== Totals")
    print(f"run 2 decisions: {dict(sorted(statuses.items()))}")
    print(f"tables re-copied in run 2: {recopied} of {done_in_run1}")
    print(
        f"run 3 (fresh lineage): ran {sum(1 for _, s in run3 if s.run is Run.RUN)} of {len(tables)}"
    )
    print(
        f"\nInspect it yourself:  sqlite3 {catalog} 'SELECT ExecutionID, OriginalExecutionID,"
        " TaskId, ExecutionStatus, NextLoadStatus FROM Execution'"
    )
    return 0 if recopied == 0 else 1
