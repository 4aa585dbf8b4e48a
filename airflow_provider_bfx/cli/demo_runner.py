"""The Airflow half of ``bfx demo``: ``python -m airflow_provider_bfx.cli.demo_runner HOME``.

``bfx demo`` starts this module in a fresh interpreter whose environment already points Airflow
at ``HOME`` (see :func:`airflow_provider_bfx.cli.demo.demo_environment`). It migrates the SQLite
metadata database, loads ``warehouse_batch`` through a ``DagBag`` (so the provider's cluster
policy and listener apply, as in production) and runs it twice with ``dag.test()``. Airflow's
own output goes to ``HOME/airflow.log``; the report goes to the original standard output.
Exit code 0 only when the story held.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

DAG_ID = "warehouse_batch"
TABLES = [f"table_{n:02d}" for n in range(1, 51)]
LOADS = [f"load_{t}" for t in TABLES]
TASKS = [*LOADS, "merge", "publish"]
FAIL_AT = "load_table_48"


@dataclass
class DemoRun:
    run_id: str
    state: str
    states: dict[str, str]  # task_id -> Airflow state
    rows: dict[str | None, Any]  # task_id -> latest catalog row; None -> the batch row


def _value(state: Any) -> str:
    return str(getattr(state, "value", state))


def _run(
    dag: Any, store: Callable[[], Any], logical_date: datetime, conf: dict[str, Any] | None
) -> DemoRun:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_run = dag.test(logical_date=logical_date, run_conf=conf)
    run_id = dag_run.run_id
    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id)
        ).all()
        states = {ti.task_id: _value(ti.state) for ti in tis}
        state = _value(
            session.scalar(
                select(DagRun.state).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id)
            )
        )
    rows: dict[str | None, Any] = {}
    for row in store().executions(DAG_ID, run_id):  # oldest first: the latest row wins
        rows[row.TaskId] = row
    return DemoRun(run_id, state, states, rows)


def _print_run(out: IO[str], title: str, run: DemoRun) -> None:
    print(f"\n== {title}", file=out)
    print(f"   run_id={run.run_id}  Airflow DagRun state: {run.state}", file=out)
    print(
        f"{'task':<18} {'Airflow state':<16} {'ExecutionID':>11} {'Status/Next':>11}"
        f" {'OriginalExecutionID':>19}",
        file=out,
    )
    for task_id in TASKS:
        row = run.rows.get(task_id)
        state = run.states.get(task_id, "-")
        if row is None:
            print(f"{task_id:<18} {state:<16} {'(no catalog row: never started)':>43}", file=out)
            continue
        codes = f"{row.ExecutionStatus}/{row.NextLoadStatus}"
        print(
            f"{task_id:<18} {state:<16} {row.ExecutionID:>11} {codes:>11}"
            f" {row.OriginalExecutionID:>19}",
            file=out,
        )


def _batch_line(label: str, run: DemoRun) -> str:
    b = run.rows.get(None)
    if b is None:
        return f"{label}: (no batch row)"
    return (
        f"{label}: ExecutionID={b.ExecutionID} {b.ExecutionStatus}/{b.NextLoadStatus}"
        f" LineageID={b.LineageID} OriginalExecutionID={b.OriginalExecutionID}"
        f" AttemptNumber={b.AttemptNumber}"
    )


def _copied_in(copy_dir: Path, run_id: str) -> set[str]:
    """Tables whose copy log has a line for ``run_id`` (the example DAG writes one per copy)."""
    return {f.stem for f in copy_dir.glob("*.copies") if run_id in f.read_text().splitlines()}


def _decision(row: Any) -> str:
    if row is None:
        return "not started"
    if row.ExecutionStatus == "C":
        return "skipped (C)"
    if row.AttemptNumber > 1:
        return "retried"
    return "ran (first attempt)"


def story(out: IO[str], home: Path) -> int:
    started = time.monotonic()
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    from airflow_provider_bfx.catalog.engine import create_catalog_engine
    from airflow_provider_bfx.catalog.store import CatalogStore
    from airflow_provider_bfx.hooks.catalog import embedded_catalog_path

    print(f"Airflow's own output (task logs): {home / 'airflow.log'}", file=out)
    print("Migrating the Airflow metadata database (SQLite) ...", file=out)
    db.upgradedb()
    bag = DagBag(dag_folder=str(home / "dags"))
    if bag.import_errors:
        print(f"The example DAG does not import: {bag.import_errors}", file=out)
        return 1
    dag = bag.get_dag(DAG_ID)
    catalog = Path(embedded_catalog_path())
    copy_dir = Path(os.environ["BFX_EXAMPLE_COPY_DIR"])
    now = datetime.now(timezone.utc).replace(microsecond=0)

    print(
        "Reading the tables: Airflow state from the DagRun's task instances; the catalog row"
        " (bfx.Execution) of each task:\n  Status S succeeded, F failed, C skipped (completed"
        " earlier in the lineage); Next C skip next time, R retry, P run normally;\n"
        "  OriginalExecutionID: the row this one continues (its own ID when it starts fresh).",
        file=out,
    )
    print(f"Run 1: {DAG_ID} with conf {{'fail_tables': ['{FAIL_AT}']}} ...", file=out)
    store: Any = None

    def open_store() -> Any:  # the routing deploys the catalog file on first use
        nonlocal store
        if store is None:
            store = CatalogStore(create_catalog_engine(f"sqlite:///{catalog}"))
        return store

    run1 = _run(dag, open_store, now - timedelta(minutes=1), {"fail_tables": [FAIL_AT]})
    _print_run(out, f"Run 1: fails at {FAIL_AT}", run1)
    print(f"\nRun 2: {DAG_ID} without failure injection ...", file=out)
    run2 = _run(dag, open_store, now, None)
    _print_run(out, "Run 2: resumes the failed batch", run2)

    loaded_in_run1 = {
        t for t, load in zip(TABLES, LOADS, strict=True) if run1.states.get(load) == "success"
    }
    recopied = loaded_in_run1 & _copied_in(copy_dir, run2.run_id)
    decisions = Counter(_decision(run2.rows.get(t)) for t in TASKS)
    airflow2 = Counter(run2.states.get(t, "-") for t in TASKS)
    retried = sorted(t for t in TASKS if _decision(run2.rows.get(t)) == "retried")

    print("\n== Totals", file=out)
    print(f"run 2 decisions: {dict(sorted(decisions.items()))}; retried: {retried}", file=out)
    print(f"run 2 Airflow states: {dict(sorted(airflow2.items()))}", file=out)
    print(f"tables re-copied in run 2: {len(recopied)} of {len(loaded_in_run1)}", file=out)
    print(_batch_line("batch of run 1 as run 1 left it", run1), file=out)
    print(_batch_line("batch of run 2", run2), file=out)
    print(
        "(run 2 succeeded, so every NextLoadStatus of the lineage is now P: nothing waits)",
        file=out,
    )

    failed1 = run1.rows.get(FAIL_AT)
    retry = run2.rows.get(FAIL_AT)
    checks = {
        "run 1 failed at table 48 after loading 47 tables": run1.state == "failed"
        and run1.states.get(FAIL_AT) == "failed"
        and len(loaded_in_run1) == 47,
        "no finished table copied again": not recopied,
        "47 loads skipped in run 2": sum(run2.states.get(t) == "skipped" for t in LOADS) == 47
        and decisions["skipped (C)"] == 47,
        "table 48 retried and succeeded": run2.states.get(FAIL_AT) == "success"
        and retry is not None
        and failed1 is not None
        and retry.ExecutionStatus == "S"
        and retry.OriginalExecutionID == failed1.ExecutionID,
        "merge and publish succeeded": run2.state == "success"
        and run2.states.get("merge") == "success"
        and run2.states.get("publish") == "success",
        "run 2 continued run 1's lineage": run1.rows.get(None) is not None
        and run2.rows.get(None) is not None
        and run2.rows[None].LineageID == run1.rows[None].ExecutionID
        and run2.rows[None].AttemptNumber == 2,
    }
    broken = [name for name, held in checks.items() if not held]
    print(f"\nCatalog: {catalog}", file=out)
    print(
        f"Inspect it:  sqlite3 {catalog} 'SELECT ExecutionID, OriginalExecutionID, TaskId,"
        " ExecutionStatus, NextLoadStatus, AttemptNumber FROM Execution'",
        file=out,
    )
    print(f"Took {time.monotonic() - started:.0f} s.", file=out)
    if broken:
        print(f"The story did NOT hold: {'; '.join(broken)}", file=out)
        return 1
    print("The story held: run 2 resumed at table 48 and re-copied nothing.", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    home = Path(args[0])
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = os.open(home / "airflow.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)  # Airflow (and whatever it started) writes here from now on
    os.dup2(log, 2)
    os.close(log)
    try:
        return story(out, home)
    except Exception:
        traceback.print_exc()  # into airflow.log
        print(
            f"The demo broke: {traceback.format_exc().strip().splitlines()[-1]}"
            f" (traceback in {home / 'airflow.log'})",
            file=out,
        )
        return 1
    finally:
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
