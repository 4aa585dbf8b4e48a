#!/usr/bin/env python
"""Airflow's own late ends: how often a try that ends skipped or failed is recorded seconds
after it ended, in a deployment that runs no routed task (decisions 0115, 0117, 0119).

Not a test (pytest never collects it): run it by hand, see ``benchmarks/README.md``::

    .venv/bin/python benchmarks/bench_late_ends.py [--rounds 3] [--pg-url URL]
        [--min-heartbeat-interval N] [--output FILE]

Goal 4's resumed new run (``bench_deployment.py``) has tries that end *skipped* in their own
process, and its "late ends" column counts those Airflow recorded about 5 s late. This
benchmark shows the same in plain Airflow, with nothing of the provider in the tasks: one
deployment (``tests.deployment.harness.Deployment``: api-server, scheduler, dag-processor,
triggerer, LocalExecutor with ``[core] parallelism`` 8, PostgreSQL metadata database) whose
dags folder holds only ``benchmarks/dags/airflow_late_ends.py``: three DAGs of ten tasks that
do nothing and end *success* (the baseline), *skipped* or *failed*. Each round runs each DAG
once. A try's duration is its task instance's ``end_date - start_date`` (from the REST API);
the task body takes no time, so a duration above :data:`LATE_SECONDS` is a late end.

Why (read in Airflow 3.3.2's ``supervisor.py``): a try that succeeds sends ``SucceedTask`` and
its supervisor records it at once; a try that ends skipped or failed sends ``TaskState``, which
the supervisor records only once it has reaped the process, and its loop waits up to
``[workers] min_heartbeat_interval`` (5 s) when the process's sockets have closed a moment
before it can be reaped.

Progress goes to stderr; the report goes to stdout (and ``--output``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_catalog import Report, loadavg, log, machine_facts  # noqa: E402
from bench_deployment import PARALLELISM, heartbeat_env  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from tests.deployment.harness import ApiError, Deployment, DeploymentError  # noqa: E402

DAG_FILE = HERE / "dags" / "airflow_late_ends.py"
#: DAG id -> the state each of its tries ends in.
DAGS = {
    "late_ends_success": "success",
    "late_ends_skipped": "skipped",
    "late_ends_failed": "failed",
}
TASKS = 10
#: A try of a task that does nothing lasts well under a second on this machine; one recorded
#: this long after its start waited for its supervisor's next tick.
LATE_SECONDS = 3.0


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_once(deployment: Deployment, dag_id: str, expected: str) -> tuple[float, list[float]]:
    """One run of ``dag_id``: its wall time (trigger -> terminal) and each try's duration."""
    began = time.monotonic()
    run_id = deployment.api.trigger(dag_id)
    deployment.api.wait_run(dag_id, run_id, timeout=300)
    wall = time.monotonic() - began
    tis = deployment.api.task_instances(dag_id, run_id)
    states = sorted({str(t.get("state")) for t in tis})
    if states != [expected] or len(tis) != TASKS:
        raise AssertionError(f"{dag_id} {run_id}: {len(tis)} tries in states {states}")
    durations = [
        (_at(t["end_date"]) - _at(t["start_date"])).total_seconds()
        for t in tis
        if t.get("start_date") and t.get("end_date")
    ]
    if len(durations) != TASKS:
        raise AssertionError(f"{dag_id} {run_id}: a try without start or end date")
    return wall, durations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BFX_TEST_PG_URL"),
        help="a PostgreSQL URL whose role may CREATE DATABASE (default: $BFX_TEST_PG_URL)",
    )
    parser.add_argument(
        "--min-heartbeat-interval",
        type=int,
        default=None,
        help="set Airflow's [workers] min_heartbeat_interval for the deployment (default:"
        " Airflow's, 5 s)",
    )
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.pg_url:
        parser.error("no PostgreSQL URL: pass --pg-url or set BFX_TEST_PG_URL")

    began = time.perf_counter()
    pg_engine = create_engine(args.pg_url, poolclass=NullPool)
    facts = [f for f in machine_facts(pg_engine) if f[0] != "SQLite (library)"]
    pg_engine.dispose()
    facts.insert(4, ("Airflow", version("apache-airflow")))
    work = Path(tempfile.mkdtemp(prefix="bfx-bench-late-ends-"))
    rep = Report()
    deployment = Deployment(
        work / "deployment",
        pg_server_url=args.pg_url,
        dags=[DAG_FILE],
        env=heartbeat_env(args.min_heartbeat_interval),
        parallelism=PARALLELISM,
        start_timeout=300.0,
    )
    results: dict[str, list[tuple[float, list[float]]]] = {d: [] for d in DAGS}
    ok = False
    try:
        log("starting the deployment (db migrate, four components)")
        deployment.start()
        for dag_id in DAGS:
            deployment.api.wait_dag_parsed(dag_id, timeout=180)
            deployment.api.unpause(dag_id)
        load_start = loadavg()
        for i in range(args.rounds):
            for dag_id, expected in DAGS.items():
                log(f"round {i + 1}/{args.rounds}: {dag_id}")
                results[dag_id].append(run_once(deployment, dag_id, expected))
        load_end = loadavg()
        ok = True
    except (ApiError, DeploymentError, TimeoutError, AssertionError) as err:
        log(f"ERROR: {err}")
        log(f"the deployment's logs are kept in {deployment.logs_dir}")
        return 1
    finally:
        log("stopping the deployment")
        deployment.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)

    rep("Airflow's late ends (plain DAGs, no routed task)")
    rep("================================================")
    rep()
    rep("Machine")
    rep("-------")
    rep.table(["what", "value"], [[k, v] for k, v in facts], align="ll")
    rep(f"  1-minute load average: {load_start:.2f} before the first run, {load_end:.2f} after")
    rep("  the last one (2 logical CPUs)")
    rep()
    rep("Deployment")
    rep("----------")
    rep("  tests.deployment.harness.Deployment: api-server, scheduler, dag-processor, triggerer;")
    rep(f"  LocalExecutor, [core] parallelism {PARALLELISM}, PostgreSQL metadata DB")
    interval = args.min_heartbeat_interval
    shown = "Airflow's default (5 s)" if interval is None else f"{interval} s"
    rep(f"  [workers] min_heartbeat_interval: {shown}")
    rep(f"  DAGs: {DAG_FILE.relative_to(ROOT)} ({TASKS} tasks each, at most 5 at once)")
    rep(f"  rounds={args.rounds}; a late end: a try lasting more than {LATE_SECONDS:.0f} s")
    rep()
    rep("Tries")
    rep("-----")
    rows = []
    for dag_id, expected in DAGS.items():
        durations = [d for _, ds in results[dag_id] for d in ds]
        walls = [w for w, _ in results[dag_id]]
        late = sum(d > LATE_SECONDS for d in durations)
        rows.append(
            [
                f"{dag_id} (tries end {expected})",
                str(len(durations)),
                f"{late} ({late / len(durations):.0%})",
                f"{statistics.median(durations):.2f}",
                f"{max(durations):.2f}",
                f"{statistics.median(walls):.1f}",
            ]
        )
    rep.table(
        ["DAG", "tries", "late ends", "median try s", "longest try s", "median run wall s"],
        rows,
    )
    rep("  the 'success' DAG is the baseline: same tasks, same deployment, same rounds")
    rep()
    rep(f"Total run time: {time.perf_counter() - began:.0f} s")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(rep.lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
