#!/usr/bin/env python
"""Benchmark of checkpoints and ``bfx.foreach``: write cost, and the resume decision.

Not a test (pytest never collects it): run it by hand, see ``benchmarks/README.md``::

    .venv/bin/python benchmarks/bench_checkpoints.py [--engines sqlite,postgresql]
        [--items 10000] [--writes 1000] [--output FILE]

What it measures, on SQLite (a file in WAL mode) and on PostgreSQL over loopback TCP, through
the execution handle a task uses (``context["bfx"]``) on a real catalog:

a. ``bfx.checkpoint(node, payload)``: p50/p99 of one call (its own transaction), a ~300-byte
   JSON payload, first write of a node (UPDATE finds nothing, INSERT) and overwrite (UPDATE);
b. ``bfx.foreach``: p50/p99 of one loop step, i.e. the ``FOREACH_PROGRESS`` row written when
   the loop asks for the next item (the loop body is empty);
c. the resume decision over ``--items`` items (default 10,000): the time of the
   ``bfx.foreach(items, key=...)`` call of a resumed attempt, which fingerprints every key, reads
   the loop's progress rows and finds the longest matching prefix, before the first item runs.
   The progress of the failed attempt is inserted in bulk (the same rows 10,000 loop steps would
   have written, but in seconds). Reported with its parts: fingerprints, the read, the prefix.

Goal (issue 5): the resume decision over 10,000 items under 100 ms on loopback PostgreSQL.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import insert, make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_catalog import DEFAULT_PG_ADMIN_URL, log, machine_facts  # noqa: E402

from airflow_provider_bfx.catalog import foreach as loops  # noqa: E402
from airflow_provider_bfx.catalog.codes import CheckpointType  # noqa: E402
from airflow_provider_bfx.catalog.engine import create_catalog_engine  # noqa: E402
from airflow_provider_bfx.catalog.machine import Run, TaskOutcome  # noqa: E402
from airflow_provider_bfx.catalog.migrate import upgrade  # noqa: E402
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec  # noqa: E402
from airflow_provider_bfx.routing.handle import ExecutionHandle  # noqa: E402

GOAL_RESUME_MS = 100.0
PAYLOAD = {
    "watermark": "2026-11-22T02:00:00.000000",
    "files": [f"landing/orders/part-{n:05d}.parquet" for n in range(8)],
    "rows": 1_234_567,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def open_handle(store: CatalogStore, run_id: str) -> ExecutionHandle:
    spec = TaskSpec(
        BatchSpec("bench_checkpoints", run_id),
        "load_tables",
        operator_fingerprint="f" * 64,
        lease_owner="bench-host:1",
    )
    started = store.start_task(spec)
    assert started.run is Run.RUN, started
    return ExecutionHandle.of_start(started, store, spec)


@contextmanager
def catalog(engine_name: str, admin_url: str) -> Iterator[CatalogStore]:
    """A fresh, deployed catalog on ``engine_name``; dropped afterwards."""
    if engine_name == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="bfx_bench_ckpt_"))
        engine = create_catalog_engine(f"sqlite:///{folder / 'catalog.db'}")
        try:
            upgrade(engine)
            yield CatalogStore(engine)
        finally:
            engine.dispose()
            shutil.rmtree(folder, ignore_errors=True)
        return
    database = "bfx_bench_checkpoints"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    engine = create_catalog_engine(make_url(admin_url).set(database=database))
    try:
        upgrade(engine)
        yield CatalogStore(engine)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


def timed(calls: int, fn: Callable[[int], Any]) -> list[float]:
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_engine(engine_name: str, admin_url: str, items: int, writes: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with catalog(engine_name, admin_url) as store:
        handle = open_handle(store, "run-1")
        handle.checkpoint("warm-up", PAYLOAD)
        log(f"{engine_name}: {writes} checkpoint writes (insert), then overwrites")
        found["insert"] = timed(writes, lambda i: handle.checkpoint(f"node-{i}", PAYLOAD))
        found["update"] = timed(writes, lambda i: handle.checkpoint(f"node-{i}", PAYLOAD))

        log(f"{engine_name}: one foreach of {writes} items, timing each step")
        steps: list[float] = []
        loop = iter(handle.foreach([f"warm-{i}" for i in range(writes + 1)]))
        next(loop)
        for _ in range(writes):
            t0 = time.perf_counter()
            next(loop)  # writes the previous item's FOREACH_PROGRESS row
            steps.append((time.perf_counter() - t0) * 1000)
        found["step"] = steps
        store.end_task(handle.execution_id, TaskOutcome.SUCCESS)
        store.end_batch("bench_checkpoints", "run-1", succeeded=True)

        log(f"{engine_name}: {items} items of progress, a failed attempt, then resume decisions")
        tables = [{"table": f"dbo.table_{n:05d}", "rows": n} for n in range(items)]
        key = lambda t: t["table"]  # noqa: E731
        fingerprints = loops.item_fingerprints(tables, key)
        failed = open_handle(store, "run-2")
        done = items - 1  # failed at the last item: the whole list is compared
        C = store.s.ExecutionCheckpoint
        now = store.clock()
        rows = [
            dict(
                ScopeKey=failed.scope_key,
                ExecutionID=failed.execution_id,
                CheckpointType=CheckpointType.FOREACH_PROGRESS.value,
                NodeKey="tables",
                IterationKey=str(i),
                ItemFingerprint=fingerprints[i],
                OperatorFingerprint=failed.operator_fingerprint,
                Payload=f'{{"index": {i}, "key": "{tables[i]["table"]}"}}',
                CreatedAt=now,
            )
            for i in range(done)
        ]
        with store.engine.begin() as conn:
            conn.execute(insert(C), rows)
        store.end_task(failed.execution_id, TaskOutcome.FINAL_FAILURE, error_message="bench")
        store.end_batch("bench_checkpoints", "run-2", succeeded=False)
        resumed = open_handle(store, "run-3")
        assert resumed.scope_key == failed.scope_key, "the resumed attempt is in the lineage"

        def decide(_: int) -> None:
            resumed._loops = 0
            loop = resumed.foreach(tables, key=key, node="tables")
            first = next(iter(loop))
            assert first is tables[done], first
            loop.close()  # type: ignore[attr-defined]

        decide(0)  # warm-up: statement cache, connection
        found["decide"] = timed(20, decide)
        found["fingerprints"] = timed(20, lambda _: loops.item_fingerprints(tables, key))
        found["read"] = timed(
            20, lambda _: store.read_foreach_progress(resumed.scope_key, "tables")
        )
        recorded = {
            i: fp for i, (fp, _) in store.read_foreach_progress(resumed.scope_key, "tables").items()
        }
        found["prefix"] = timed(20, lambda _: loops.resume_point(fingerprints, recorded))
        tuple_tables = [("dbo", f"table_{n:05d}") for n in range(items)]
        found["fingerprints_tuple"] = timed(20, lambda _: loops.item_fingerprints(tuple_tables))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=1_000)
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BFX_BENCH_PG_URL")
        or os.environ.get("BFX_TEST_PG_URL")
        or DEFAULT_PG_ADMIN_URL,
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    results = {e: bench_engine(e, args.pg_admin_url, args.items, args.writes) for e in engines}
    pg = None
    if "postgresql" in engines:
        pg = create_catalog_engine(args.pg_admin_url)
    lines = ["# bench_checkpoints", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine_facts(pg)]
    if pg is not None:
        pg.dispose()
    lines += [
        "",
        f"## Checkpoint writes ({args.writes} calls each; ms)",
        "",
        "| engine | checkpoint() first write p50 / p99 | overwrite p50 / p99 |"
        " foreach step p50 / p99 |",
        "| --- | --- | --- | --- |",
    ]
    for e, r in results.items():
        cells = [
            f"{percentile(r[k], 0.5):.2f} / {percentile(r[k], 0.99):.2f}"
            for k in ("insert", "update", "step")
        ]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Resume decision over {args.items:,} items (20 calls; ms)",
        "",
        "| engine | decision p50 / max | fingerprints (str keys) | read progress | prefix |"
        " fingerprints (tuple keys) | goal < 100 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e, r in results.items():
        p50 = statistics.median(r["decide"])
        goal = ("PASS" if p50 < GOAL_RESUME_MS else "MISS") if e == "postgresql" else "n/a"
        lines.append(
            f"| {e} | {p50:.1f} / {max(r['decide']):.1f} "
            f"| {statistics.median(r['fingerprints']):.1f} "
            f"| {statistics.median(r['read']):.1f} "
            f"| {statistics.median(r['prefix']):.2f} "
            f"| {statistics.median(r['fingerprints_tuple']):.1f} | {goal} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
