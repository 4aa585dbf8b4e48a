#!/usr/bin/env python
"""Benchmark of a task start's catalog work against the size of its DAG run (issue 12, goal 2).

Not a test (pytest never collects it): run it by hand, see ``benchmarks/README.md``::

    .venv/bin/python benchmarks/bench_run_size.py [--engines sqlite,postgresql] [--output FILE]

What one timed "gate" call is here: the catalog work the gate does for a routed task with two
upstreams, in its order (``routing/gate.py``), without Airflow's side: the evidence read
(``runs_awaiting_evidence``), the upstream read, and ``start_task``. Its ``end_task`` follows,
untimed. The upstream read is timed both ways, alternating call by call in the same runs:

* **new**: ``latest_task_records(dag, run, upstream ids)``, what the gate reads now;
* **baseline**: ``task_records(dag, run)``, every task row of the run, what the gate read
  before (decision 0100).

Workloads, each on a fresh catalog per engine, rows written through the store itself (every
untimed task started and ended successfully, so the catalog holds what real runs leave):

1. **run of 50**: 20 DAG runs of 50 tasks; in each, the last 10 tasks are timed (the run holds
   40 to 49 rows when they start);
2. **run of 5,000**: 2 DAG runs of 5,000 tasks; in each, the last 100 are timed (4,900 to 4,999
   rows). Every run is the only run of its own DAG; all are seeded first, then the probes of 1
   and 2 are timed interleaved (one of 1, one of 2, ...), so that both see the same machine;
3. **mapped task of 2,000 items**: two runs (of two DAGs), each an unmapped ``producer`` and
   ``items`` mapped over items (upstream: ``producer``): the first 100 items of one are timed
   against the last 100 of the other, whose first 1,900 items are written first, interleaved.
4. **resumed mapped task, 50 vs 2,000 items**: the same shape failed at its last item, then
   resumed in a new DAG run; the first 40 item starts of both sizes timed, interleaved
   (:func:`resumed_mapped`). Here the evidence read alternates, not the upstream read: with the
   item's identity (its own rows of the failed run) or without (every item's latest row).

Goals (issue 12, goal 2): p50 in the 5,000-task run <= 1.2x p50 in the 50-task run; the last
100 items of the mapped task <= 1.2x the first 100; an item start of the resumed 2,000-item
task <= 1.2x one of the resumed 50-item task. The report states the machine and the
1-minute load average before and after each timed workload.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_catalog import (  # noqa: E402
    DEFAULT_PG_ADMIN_URL,
    PostgresTarget,
    Report,
    SqliteTarget,
    Target,
    loadavg,
    machine_facts,
    percentile,
    verdict,
)

from airflow_provider_bfx.catalog.codes import ExecutionStatus  # noqa: E402
from airflow_provider_bfx.catalog.engine import create_catalog_engine  # noqa: E402
from airflow_provider_bfx.catalog.machine import TaskOutcome  # noqa: E402
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec  # noqa: E402

GOAL_RATIO = 1.2
OWNER = "bench-host:1"
UPSTREAMS = ("t00000", "t00001")


@dataclass
class Timed:
    """The timed calls of one workload: ms and rows the upstream read returned, per mode."""

    name: str
    ms: dict[str, list[float]] = field(default_factory=lambda: {"new": [], "baseline": []})
    rows: dict[str, list[int]] = field(default_factory=lambda: {"new": [], "baseline": []})
    load: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0


def untimed(store: CatalogStore, batch: BatchSpec, task_id: str, **kw: object) -> None:
    started = store.start_task(TaskSpec(batch, task_id, lease_owner=OWNER, **kw))  # type: ignore[arg-type]
    store.end_task(started.execution_id, TaskOutcome.SUCCESS)


def analyze(store: CatalogStore) -> None:
    """Refresh the planner's statistics after the untimed writes, before timing: a live
    catalog has them (PostgreSQL's autovacuum analyzes a table once a tenth of it changed), but
    a table filled within seconds by the seeding still has an empty table's, and PostgreSQL then
    plans the latest-row anti-join as a scan of the whole table per row: 1.4 s for one read of
    2,000 rows (measured 2026-12-03), a figure of the seeding's timing, not of the catalog."""
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def gate_call(
    store: CatalogStore, spec: TaskSpec, upstream: tuple[str, ...], mode: str, out: Timed
) -> None:
    """One gate's catalog work (see the module docstring), timed; then the task ends."""
    dag_id, run_id = spec.batch.dag_id, spec.batch.run_id
    read: Callable[[], list[object]]
    if mode == "new":
        read = lambda: store.latest_task_records(dag_id, run_id, upstream)  # noqa: E731
    else:
        read = lambda: store.task_records(dag_id, run_id)  # noqa: E731
    t0 = time.perf_counter()
    store.runs_awaiting_evidence(dag_id, run_id)
    rows = read()
    started = store.start_task(spec)
    t1 = time.perf_counter()
    if started.status is not ExecutionStatus.EXECUTING:
        raise AssertionError(f"{spec.external_id}: {started.status.value}")
    store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    out.ms[mode].append((t1 - t0) * 1000)
    out.rows[mode].append(len(rows))


@dataclass(frozen=True)
class Shape:
    """DAG runs of one size: ``runs`` runs (each of its own DAG) of ``size`` tasks, the last
    ``timed`` of each timed."""

    name: str
    prefix: str
    runs: int
    size: int
    timed: int

    def batch(self, r: int) -> BatchSpec:
        return BatchSpec(f"{self.prefix}_{r:03d}", "run_000")

    def probes(self) -> list[TaskSpec]:
        return [
            TaskSpec(self.batch(r), f"t{i:05d}", lease_owner=OWNER)
            for r in range(self.runs)
            for i in range(self.size - self.timed, self.size)
        ]


def runs_of(store: CatalogStore, small: Shape, large: Shape) -> tuple[Timed, Timed]:
    """Seed both shapes' runs (untimed), then time their probes interleaved (small, large,
    small, large...) so that both sides see the same machine; the upstream read alternates
    between new and baseline every pair. Each run is the only run of its DAG, so the evidence
    read finds the same (nothing) on both sides."""
    for shape in (small, large):
        for r in range(shape.runs):
            for i in range(shape.size - shape.timed):
                untimed(store, shape.batch(r), f"t{i:05d}")
    analyze(store)
    outs = Timed(small.name), Timed(large.name)
    probes = small.probes(), large.probes()
    assert len(probes[0]) == len(probes[1])
    load0 = loadavg()
    began = time.perf_counter()
    for k in range(len(probes[0])):
        mode = "new" if k % 2 == 0 else "baseline"
        for side in (0, 1):
            gate_call(store, probes[side][k], UPSTREAMS, mode, outs[side])
    for out in outs:
        out.seconds = time.perf_counter() - began
        out.load = (load0, loadavg())
    for shape in (small, large):
        for r in range(shape.runs):
            store.end_batch(shape.batch(r).dag_id, "run_000", succeeded=True)
    return outs


def item(batch: BatchSpec, i: int) -> TaskSpec:
    """Item ``i`` of the task ``items``, mapped over items (identity ``item-<i>``)."""
    return TaskSpec(
        batch, "items", map_index=i, item_fingerprint=f"item-{i:05d}", lease_owner=OWNER
    )


def mapped(store: CatalogStore, items: int, timed: int = 100) -> tuple[Timed, Timed]:
    """Two runs (of two DAGs), each a ``producer`` and a task mapped over items (upstream
    ``producer``): the first ``timed`` items of one against the last ``timed`` of the other,
    whose ``items - timed`` earlier items are written first (untimed); timed interleaved,
    one item of each in turn, so that both see the same machine."""
    first = Timed(f"mapped: items 0-{timed - 1}")
    last = Timed(f"mapped: items {items - timed}-{items - 1}")
    small, large = BatchSpec("dag_mapped_a", "run_000"), BatchSpec("dag_mapped_b", "run_000")

    for batch in (small, large):
        untimed(store, batch, "producer")
    for i in range(items - timed):
        started = store.start_task(item(large, i))
        store.end_task(started.execution_id, TaskOutcome.SUCCESS)
    analyze(store)
    load0 = loadavg()
    began = time.perf_counter()
    for k in range(timed):
        mode = "new" if k % 2 == 0 else "baseline"
        gate_call(store, item(small, k), ("producer",), mode, first)
        gate_call(store, item(large, items - timed + k), ("producer",), mode, last)
    for out in (first, last):
        out.load, out.seconds = (load0, loadavg()), time.perf_counter() - began
    for batch in (small, large):
        store.end_batch(batch.dag_id, batch.run_id, succeeded=True)
    return first, last


def resumed_mapped(
    store: CatalogStore, small: int, large: int, timed: int = 40
) -> tuple[Timed, Timed]:
    """A mapped task resumed in a new DAG run, at two sizes (two DAGs): in ``run_000``
    ``producer`` and every item succeeded but the last, which failed; in ``run_001`` the
    producer's start creates the resumed batch (untimed), then items 0 to ``timed - 1`` of
    both sizes are timed, interleaved. One timed call = the evidence read of an item start of a
    resumed run, the upstream read and ``start_task`` (which skips the completed item).

    The evidence read alternates: 'new' passes the item's identity (only its own rows of the
    failed run are read), 'baseline' does not (every item's latest row of the task in the
    failed run, what the gate read before). Not timed here: Airflow's answer to the question
    that follows, every item's state (baseline) or one instance's (new)."""
    outs = Timed(f"resumed mapped: {small} items"), Timed(f"resumed mapped: {large:,} items")
    batches = []
    for n, dag_id in ((small, "dag_resumed_small"), (large, "dag_resumed_large")):
        failed = BatchSpec(dag_id, "run_000")
        untimed(store, failed, "producer")
        for i in range(n):
            started = store.start_task(item(failed, i))
            last = i == n - 1
            outcome = TaskOutcome.FINAL_FAILURE if last else TaskOutcome.SUCCESS
            store.end_task(started.execution_id, outcome, error_message="boom" if last else None)
        store.end_batch(dag_id, "run_000", succeeded=False)
        resumed = BatchSpec(dag_id, "run_001")
        store.start_task(TaskSpec(resumed, "producer", lease_owner=OWNER))
        batches.append(resumed)
    analyze(store)
    load0 = loadavg()
    began = time.perf_counter()
    for k in range(timed):
        mode = "new" if k % 2 == 0 else "baseline"
        for side in (0, 1):
            batch = batches[side]
            spec = item(batch, k)
            fp = spec.item_fingerprint
            t0 = time.perf_counter()
            (waiting,) = store.runs_awaiting_evidence(
                batch.dag_id,
                batch.run_id,
                task_id="items",
                item_fingerprint=fp if mode == "new" else None,
            )
            store.latest_task_records(batch.dag_id, batch.run_id, ("producer",))
            started = store.start_task(spec)
            t1 = time.perf_counter()
            if started.status is not ExecutionStatus.SKIPPED:
                raise AssertionError(f"{spec.external_id}: {started.status.value}")
            outs[side].ms[mode].append((t1 - t0) * 1000)
            outs[side].rows[mode].append(len(waiting.task_rows or ()))
    for out in outs:
        out.load, out.seconds = (load0, loadavg()), time.perf_counter() - began
    for batch in batches:
        store.end_batch(batch.dag_id, batch.run_id, succeeded=True)
    return outs


def report(rep: Report, engine: str, pairs: list[tuple[Timed, Timed]]) -> list[tuple[str, bool]]:
    """One table row per workload pair and read; returns each judged goal and whether met."""
    goals: list[tuple[str, bool]] = []
    rows = []
    for small, large in pairs:
        for mode in ("new", "baseline"):
            a, b = percentile(small.ms[mode], 50), percentile(large.ms[mode], 50)
            ratio = b / a
            judged = mode == "new"
            ok = ratio <= GOAL_RATIO
            if judged:
                goals.append(
                    (
                        f"{engine}: {large.name} {b:.2f} ms vs {small.name} {a:.2f} ms:"
                        f" x{ratio:.2f} (goal <= {GOAL_RATIO:g}x)",
                        ok,
                    )
                )
            rows.append(
                [
                    engine,
                    f"{large.name} vs {small.name}",
                    "new" if judged else "baseline (the earlier read)",
                    f"{a:.2f}",
                    f"{b:.2f}",
                    f"{ratio:.2f}",
                    verdict(ok) if judged else "-",
                    f"{sum(small.rows[mode]) / len(small.rows[mode]):,.0f}"
                    f" / {sum(large.rows[mode]) / len(large.rows[mode]):,.0f}",
                    f"{small.load[0]:.2f}->{small.load[1]:.2f}"
                    f" / {large.load[0]:.2f}->{large.load[1]:.2f}",
                ]
            )
    rep.table(
        [
            "engine",
            "compared",
            "alternated read",
            "p50 ms (small)",
            "p50 ms (large)",
            "ratio",
            f"goal <= {GOAL_RATIO:g}x",
            "rows read (small / large)",
            "load avg (small / large)",
        ],
        rows,
        align="lllrrrrrl",
    )
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--small", type=int, default=50, help="tasks in the small runs")
    parser.add_argument("--large", type=int, default=5_000, help="tasks in the large runs")
    parser.add_argument("--items", type=int, default=2_000, help="items of the mapped task")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BFX_BENCH_PG_URL")
        or os.environ.get("BFX_TEST_PG_URL")
        or DEFAULT_PG_ADMIN_URL,
        help="a PostgreSQL URL whose role may CREATE DATABASE (env BFX_BENCH_PG_URL)",
    )
    parser.add_argument("--pg-database", default="bfx_bench_run_size", help="created and dropped")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    targets: list[Target] = []
    results: dict[str, list[tuple[Timed, Timed]]] = {}
    pg_engine = None
    try:
        for name in engines:
            target: Target = (
                SqliteTarget()
                if name == "sqlite"
                else PostgresTarget(args.pg_admin_url, args.pg_database, keep=False)
            )
            targets.append(target)
            target.fresh("run_size")
            engine = create_catalog_engine(target.url())
            store = CatalogStore(engine, check_schema=False)
            print(f"{name}: runs of {args.small}", file=sys.stderr, flush=True)
            print(f"{name}: runs of {args.small} and {args.large}", file=sys.stderr, flush=True)
            small, large = runs_of(
                store,
                Shape(f"run of {args.small}", "dag_small", 20, args.small, 10),
                Shape(f"run of {args.large:,}", "dag_large", 2, args.large, 100),
            )
            print(f"{name}: mapped task of {args.items} items", file=sys.stderr, flush=True)
            first, last = mapped(store, args.items)
            print(
                f"{name}: resumed mapped task, {args.small} vs {args.items} items",
                file=sys.stderr,
                flush=True,
            )
            resumed = resumed_mapped(store, args.small, args.items)
            results[name] = [(small, large), (first, last), resumed]
            engine.dispose()
            if name == "postgresql":
                pg_engine = create_catalog_engine(target.url())

        rep = Report()
        rep("bfx run-size benchmark (issue 12, goal 2)")
        rep("=========================================")
        rep()
        rep("Machine")
        rep("-------")
        rep.table(["what", "value"], [list(f) for f in machine_facts(pg_engine)], "ll")
        if pg_engine is not None:
            pg_engine.dispose()
        rep()
        rep(
            "One timed call = the gate's catalog work for a task with upstreams: evidence read +"
            " upstream read + start_task."
        )
        rep(
            "The upstream read alternates call by call: 'new' = latest_task_records (the"
            " upstreams' latest rows), 'baseline' = task_records (every row of the run, main)."
        )
        rep(
            f"Runs of {args.small}: 20 runs, last 10 tasks timed each; runs of {args.large:,}:"
            " 2 runs, last 100 timed each; each run its DAG's only run; the two sizes timed"
            " interleaved. Mapped: items 0-99 of one mapped task vs items 1,900-1,999 of another,"
            " interleaved."
        )
        rep(
            f"Resumed mapped: a mapped task of {args.small} items and one of {args.items:,}, each"
            " failed at its last item, resumed in a new run; items 0-39 of both timed,"
            " interleaved. Its alternated read is the evidence read: 'new' = the item's own"
            " rows of the failed run, 'baseline' = every item's row (the read before); rows"
            " read = the rows it returned. Airflow's answer to the question that follows (one"
            " instance's state, or every item's) is not in this figure."
        )
        rep(
            "load avg = 1-minute load average before->after the timed workload"
            f" ({os.cpu_count()} CPUs)."
        )
        rep()
        goals: list[tuple[str, bool]] = []
        for name, pairs in results.items():
            goals += report(rep, name, pairs)
            rep()
        rep("Goals (issue 12, goal 2: p50 of the gate's catalog work, new upstream read)")
        rep("-----")
        for what, ok in goals:
            rep(f"  {verdict(ok)}  {what}")
        rep()
        rep(f"Total run time: {time.perf_counter() - began:.0f} s")
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text("\n".join(rep.lines) + "\n")
    finally:
        for target in targets:
            target.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
