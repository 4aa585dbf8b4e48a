#!/usr/bin/env python
"""What the routing adds to every task process before the task's first catalog statement.

Not a test (pytest never collects it). Each sample is a fresh ``python`` process (as Airflow's
supervisor starts one per task try), timed from inside: after ``import airflow.sdk`` (which the
task process imports anyway), the gate's imports, the catalog store of the connection
``bfx_catalog_default`` (an ``AIRFLOW_CONN_`` variable naming a deployed SQLite catalog file),
and the first transaction (which checks the schema revision). Variants, interleaved, same run:

* ``now``: the path as shipped (the schema check reads the version table, no Alembic);
* ``with alembic`` (the baseline: the path before ``catalog/revision.py``): the same, plus
  ``import airflow_provider_bfx.catalog.migrate`` (Alembic), which every task process paid.

    .venv/bin/python benchmarks/bench_task_setup.py [--samples 15] [--output FILE]

Prints the median and p90 of each step's wall and CPU time per variant, the machine and the
load average. ``PYTHONDONTWRITEBYTECODE`` is left as the environment has it (it is set on the
project machine, so modules without shipped bytecode are compiled in every process, as in a
deployment whose site-packages is read-only); the report says which.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_catalog import loadavg, machine_facts  # noqa: E402

PROBE = r"""
import json, os, sys, time
def now():
    return time.perf_counter(), time.process_time()
t0 = now()
import airflow.sdk  # noqa: F401  (the task process has it already)
t1 = now()
from airflow_provider_bfx.routing import gate  # noqa: F401
if os.environ.get("BENCH_WITH_ALEMBIC"):
    import airflow_provider_bfx.catalog.migrate  # noqa: F401
t2 = now()
from airflow_provider_bfx.routing.catalog import get_store
store = get_store("bfx_catalog_default")
store.executions("no_such_dag")
t3 = now()
alembic = any(m.split(".")[0] == "alembic" for m in sys.modules)
print(json.dumps({
    "imports": [t2[0] - t1[0], t2[1] - t1[1]],
    "store + first transaction": [t3[0] - t2[0], t3[1] - t2[1]],
    "total after airflow.sdk": [t3[0] - t1[0], t3[1] - t1[1]],
    "alembic imported": alembic,
}))
"""

VARIANTS = {"now": {}, "with alembic (before)": {"BENCH_WITH_ALEMBIC": "1"}}


def sample(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    from airflow_provider_bfx.catalog.engine import create_catalog_engine
    from airflow_provider_bfx.catalog.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="bfx-bench-setup-") as tmp:
        db = Path(tmp) / "catalog.db"
        engine = create_catalog_engine(f"sqlite:///{db}")
        upgrade(engine)
        engine.dispose()
        base = {**os.environ, "AIRFLOW_CONN_BFX_CATALOG_DEFAULT": f"sqlite:///{db}"}
        base.setdefault("AIRFLOW_HOME", str(Path(tmp) / "airflow_home"))
        load0 = loadavg()
        results: dict[str, list[dict[str, object]]] = {name: [] for name in VARIANTS}
        for extra in VARIANTS.values():  # one warm-up each (page cache)
            sample({**base, **extra})
        for i in range(args.samples):
            for name, extra in VARIANTS.items() if i % 2 == 0 else reversed(VARIANTS.items()):
                results[name].append(sample({**base, **extra}))
                print(f"sample {i + 1}/{args.samples} {name}", file=sys.stderr)
        load1 = loadavg()

    lines = ["bfx task-process setup benchmark", "=" * 32, ""]
    lines += [f"{k:<22}{v}" for k, v in machine_facts(None)]
    lines += [
        f"{'PYTHONDONTWRITEBYTECODE':<24}{os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}",
        f"{'load average':<22}{load0:.2f} -> {load1:.2f}",
        f"{'samples':<22}{args.samples} fresh processes per variant, interleaved",
        "",
        f"{'step (ms, median / p90)':<30} {'variant':<24} {'wall':>16} {'CPU':>16}",
        "-" * 90,
    ]
    for step in ("imports", "store + first transaction", "total after airflow.sdk"):
        for name in VARIANTS:
            walls = sorted(float(r[step][0]) * 1000 for r in results[name])  # type: ignore[index]
            cpus = sorted(float(r[step][1]) * 1000 for r in results[name])  # type: ignore[index]
            p90 = int(0.9 * (len(walls) - 1))
            lines.append(
                f"{step:<30} {name:<24} {statistics.median(walls):7.1f} / {walls[p90]:6.1f}"
                f" {statistics.median(cpus):7.1f} / {cpus[p90]:6.1f}"
            )
    for name in VARIANTS:
        imported = {bool(r["alembic imported"]) for r in results[name]}
        lines.append(f"alembic imported ({name}): {sorted(imported)}")
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
