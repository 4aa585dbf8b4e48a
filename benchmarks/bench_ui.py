"""The recovery view's API with a big catalog: every call p95 < 200 ms at 1,000,000 executions.

One real Airflow deployment (``tests.deployment.harness.Deployment``: api-server, scheduler,
dag-processor, triggerer; PostgreSQL metadata DB) whose catalog connection
(``bfx_catalog_default``, in the metadata DB) points first at a PostgreSQL catalog seeded with
``--baseline-history`` executions (the baseline), then at one seeded with ``--history``
executions; the api-server is restarted in between so nothing is cached. Each route is called
``--calls`` times over real HTTP on loopback with a JWT of the admin user (authorization and the
auth manager's checks included), and p50/p95 are printed side by side for both catalogs, with
PASS/MISS against the goal, the machine and the load average.

The history is the one ``bench_catalog.py`` seeds (500 DAGs ``dag_0000``..``dag_0499`` of 20
tasks, whole runs of 21 rows; every 10th run of a DAG fails, even DAGs resume it).

    .venv/bin/python benchmarks/bench_ui.py                 # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_ui.py --history 200000 --calls 30
    .venv/bin/python benchmarks/bench_ui.py --output benchmarks/results/ui.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_catalog import (  # noqa: E402
    DAGS,
    create_schema,
    loadavg,
    log,
    machine_facts,
    percentile,
    seed,
    verdict,
)
from sqlalchemy import create_engine, make_url, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from tests.deployment.harness import ApiClient, Deployment  # noqa: E402

GOAL_P95_MS = 200.0
API = "/bfx/api/v1"
DEFAULT_PG = "postgresql+psycopg2://bfx_test:bfx_test@127.0.0.1:5432/postgres"


Route = tuple[str, Callable[[int], Any]]


def routes(client: ApiClient, first_batch: int, rows: int) -> list[Route]:
    """(label, call(i)) for every route; ``i`` varies the DAG so caches do not flatter us."""

    def dag(i: int) -> str:
        return f"dag_{(i * 37) % DAGS:04d}"

    def get(path: str) -> Callable[[int], Any]:
        def call(i: int) -> Any:
            answer = client.get(path.format(dag=dag(i), i=i))
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
            return answer

        return call

    # Batch ids from the middle of the history on (run g's batch is g * 21 + 1), wrapping
    # round inside the seeded runs: the 1k baseline has fewer runs than there are calls.
    runs = max(1, rows // 21)
    middle_run = runs // 2

    def batch(i: int) -> Any:
        eid = ((middle_run + i) % runs) * 21 + 1
        answer = client.get(f"/bfx/api/v1/batches/{eid}")
        assert answer.status_code == 200, (eid, answer.status_code, answer.text[:300])

    def deep_page(i: int) -> Any:
        answer = client.get(
            f"/bfx/api/v1/dags/{dag(i)}/batches", params={"limit": 25, "before": first_batch + 1}
        )
        assert answer.status_code == 200, answer.text[:300]

    def reset(i: int) -> Any:
        answer = client.post(f"/bfx/api/v1/dags/{dag(i)}/reset", {"task_id": "task_03"})
        assert answer.status_code == 200, answer.text[:300]

    def recover(i: int) -> Any:
        answer = client.post("/bfx/api/v1/recover")
        assert answer.status_code == 200, answer.text[:300]

    return [
        ("GET overview (all DAGs)", get("/bfx/api/v1/overview")),
        ("GET dags/{d}/plan", get("/bfx/api/v1/dags/{dag}/plan")),
        ("GET dags/{d}/batches (newest page)", get("/bfx/api/v1/dags/{dag}/batches")),
        ("GET dags/{d}/batches (oldest page)", deep_page),
        ("GET batches/{id}", batch),
        ("GET dags/{d}/tasks/{t}/executions", get(f"{API}/dags/{{dag}}/tasks/task_07/executions")),
        ("GET page /bfx/ui/dags/{d}", get("/bfx/ui/dags/{dag}")),
        ("GET page /bfx/ui/recovery", get("/bfx/ui/recovery")),
        ("POST dags/{d}/reset (task)", reset),
        ("POST recover", recover),
    ]


def measure(client: ApiClient, rows: int, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for label, call in routes(client, 1, rows):
        call(0)  # warm-up: the first call builds the app and the engine
        times = []
        for i in range(1, calls + 1):
            t0 = time.perf_counter()
            call(i)
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = times
        log(f"  {label}: p50 {statistics.median(times):.1f} ms p95 {percentile(times, 95):.1f} ms")
    return out


def create_db(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_db(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def point_catalog(deployment: Deployment, url: str) -> None:
    """Redefine ``bfx_catalog_default`` in the metadata DB and restart the api-server."""
    deployment.run_cli("airflow", "connections", "delete", "bfx_catalog_default")
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    added = deployment.run_cli(
        "airflow", "connections", "add", "bfx_catalog_default", "--conn-uri", plain
    )
    assert added.returncode == 0, added.stderr
    deployment.restart("api-server")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if deployment.anonymous().get("/api/v2/monitor/health").status_code == 200:
                return
        except Exception:  # noqa: BLE001 - the api-server is still starting
            pass
        time.sleep(1)
    raise RuntimeError("the api-server did not come back after the restart")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--history", type=int, default=1_000_000)
    ap.add_argument("--baseline-history", type=int, default=1_000)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument(
        "--pg-admin-url",
        default=(
            os.environ.get("BFX_BENCH_PG_URL") or os.environ.get("BFX_TEST_PG_URL") or DEFAULT_PG
        ),
    )
    ap.add_argument("--output")
    args = ap.parse_args()

    small_db, large_db = "bfx_ui_small", "bfx_ui_large"
    urls = {}
    seeded = {}
    try:
        for name, history in ((small_db, args.baseline_history), (large_db, args.history)):
            log(f"seeding {name} with {history:,} executions")
            urls[name] = create_db(args.pg_admin_url, name)
            create_schema(urls[name])
            seeded[name] = seed(urls[name], history)
        with tempfile.TemporaryDirectory(prefix="bfx-bench-ui-") as root:
            deployment = Deployment(root, pg_server_url=args.pg_admin_url, parallelism=2)
            deployment.start()
            try:
                results = {}
                load = {}
                for name in (small_db, large_db):
                    point_catalog(deployment, urls[name])
                    client = ApiClient.login(deployment.base_url, "admin", _admin_password())
                    before = loadavg()
                    log(f"measuring against {name}")
                    results[name] = measure(client, seeded[name][0], args.calls)
                    load[name] = (before, loadavg())
            finally:
                deployment.stop()
    finally:
        for name in (small_db, large_db):
            drop_db(args.pg_admin_url, name)

    lines = ["bfx recovery view API benchmark", "=" * 31, "", "Machine", "-------"]
    lines += [f"{k:<22}{v}" for k, v in machine_facts(None)]
    lines += [
        "",
        f"Run: calls={args.calls} per route; real api-server over loopback HTTP, admin JWT;",
        "     catalog = PostgreSQL 15 on loopback, seeded as bench_catalog.py seeds it.",
        "",
        "catalog          Execution rows  seed s  load avg (before -> after)",
    ]
    for name in (small_db, large_db):
        rows, secs = seeded[name]
        lines.append(
            f"{name:<16} {rows:>14,}  {secs:6.1f}  {load[name][0]:.2f} -> {load[name][1]:.2f}"
        )
    lines += [
        "",
        f"{'route':<38} {'p50 1k':>8} {'p95 1k':>8} {'p50 1M':>8} {'p95 1M':>8}  goal p95 < 200 ms",
        "-" * 92,
    ]
    for label in results[small_db]:
        s, big = results[small_db][label], results[large_db][label]
        p95 = percentile(big, 95)
        lines.append(
            f"{label:<38} {statistics.median(s):8.1f} {percentile(s, 95):8.1f}"
            f" {statistics.median(big):8.1f} {p95:8.1f}  {verdict(p95 < GOAL_P95_MS)}"
        )
    lines.append("")
    lines.append("(1k / 1M: the baseline and the big catalog, same deployment, same run; ms.)")
    text_out = "\n".join(lines)
    print(text_out)
    if args.output:
        Path(args.output).write_text(text_out + "\n", encoding="utf-8")
    return 0


def _admin_password() -> str:
    from tests.deployment.harness import ADMIN_PASSWORD

    return ADMIN_PASSWORD


if __name__ == "__main__":
    sys.exit(main())
