#!/usr/bin/env python
"""Benchmark of the routing in a real deployment: fresh runs, and resuming after a failure.

Not a test (pytest never collects it): run it by hand, see ``benchmarks/README.md``::

    .venv/bin/python benchmarks/bench_deployment.py [--rounds 3] [--quick] [--pg-url URL]
        [--output FILE]

One Airflow deployment (``tests.deployment.harness.Deployment``: api-server, scheduler,
dag-processor, triggerer, LocalExecutor with ``[core] parallelism`` 8, a fresh PostgreSQL
metadata database) with a PostgreSQL catalog defined as ``AIRFLOW_CONN_BFX_CATALOG_DEFAULT``
(``CatalogSetup.create("env", ...)``), deployed with ``bfx catalog init``. Its dags folder holds
``example_dags/warehouse_batch.py`` (tag ``bfx``: routed) and ``warehouse_batch_plain``, the
same source with another dag_id and without the tag (plain Airflow), generated here.

After one untimed warm-up run of each DAG, every round:

* **fresh runs**: one run of each DAG, no failure injected, timed from the trigger call until
  the REST API reports the run terminal (polled every 0.2 s). A routed fresh run starts from a
  closed lineage (the catalog's last batch of the DAG ended and ``NextLoadStatus`` P);
* **resume**: (a) routed: a run with ``{"fail_tables": ["load_table_48"]}`` (untimed), then a
  NEW run without conf, timed trigger -> terminal: the first of the five first loads skips the
  other completed loads ahead (decision 0106: no task process for them), the other four first
  loads skip themselves, 48, 49, 50, merge and publish run; (b) plain Airflow: the same failed
  run on the plain DAG, then
  Airflow's own alternative: ``clearTaskInstances`` of ``load_table_48`` with its downstream
  tasks in that run (only_failed false, reset_dag_runs true), timed from the clear call until
  the run is terminal again. The failure is injected through the run's conf, which a cleared run
  keeps, so the benchmark first empties ``dag_run.conf`` of that run in the metadata database
  (untimed): the cause of the failure is fixed, as it is for the routed new run; (c) routed,
  in place: another routed run failing at 48 (untimed), its conf emptied likewise, then ``POST
  /bfx/api/v1/dags/<dag>/resume`` (``bfx resume``: Airflow clears the failed and
  upstream_failed tasks of that run), timed from the call until the run is terminal again.

The variants alternate which goes first from one round to the next. Every run is checked (run
state, task states, catalog rows and batch status); a run in an unexpected state is an error
(exit 1). A missed goal is reported, never an error.

Task processes of a window: task instances of the run whose ``start_date`` falls in the window
and which have a ``hostname`` (they ran in a task process). CPU seconds of a window: every
process of the deployment (each component's session and descendants, with ``psutil``: user +
system of the live processes plus the children times of those reaped), the whole PostgreSQL
server (postmaster and its backends: shared with any other client of the server) and the whole
machine (``/proc/stat``).

Progress goes to stderr; the report goes to stdout (and ``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import psutil  # noqa: E402
from bench_catalog import Report, loadavg, log, machine_facts, verdict  # noqa: E402
from sqlalchemy import create_engine, make_url, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from tests.deployment.catalogs import CatalogSetup, wait_batch_closed  # noqa: E402
from tests.deployment.harness import ApiError, Deployment, DeploymentError  # noqa: E402

SOURCE_DAG = ROOT / "example_dags" / "warehouse_batch.py"
ROUTED = "warehouse_batch"
PLAIN = "warehouse_batch_plain"
TASKS = 52  # 50 loads, merge, publish
FAILED_TASK = "load_table_48"
FAIL_CONF = {"fail_tables": [FAILED_TASK]}
RESUMED_TASKS = {"load_table_48", "load_table_49", "load_table_50", "merge", "publish"}
PARALLELISM = 8
POLL_SECONDS = 0.2
RUN_TIMEOUT = 900.0
GOAL_FRESH = 1.05  # routed fresh run <= 1.05x the plain fresh run (wall)
GOAL_RESUME = 1.5  # routed resumed new run <= 1.5x Airflow's clear + downstream (wall)
GOAL_FRESH_CPU = 1.25  # routed fresh run <= 1.25x the plain fresh run (CPU of the deployment)
KINDS = ("plain_fresh", "routed_fresh", "routed_resumed", "routed_in_place", "plain_clear")
LABELS = {
    "plain_fresh": "plain fresh run (52 tasks)",
    "routed_fresh": "routed fresh run (52 tasks)",
    "routed_resumed": "routed resumed: new run after the failure",
    "routed_in_place": "routed: bfx resume in place (API)",
    "plain_clear": "plain: clear load_table_48 + downstream",
    "warmup_routed": "warm-up, routed (untimed)",
    "warmup_plain": "warm-up, plain (untimed)",
    "routed_failed": "routed run failing at 48 (untimed)",
    "plain_failed": "plain run failing at 48 (untimed)",
    "routed_closing": "routed run closing the lineage (untimed)",
}
COMPONENTS = Deployment.CORE_COMPONENTS


class BenchError(RuntimeError):
    """A run ended in a state the benchmark did not expect."""


def write_plain_copy(folder: Path) -> Path:
    source = SOURCE_DAG.read_text(encoding="utf-8")
    plain = source.replace(f'dag_id="{ROUTED}"', f'dag_id="{PLAIN}"').replace(
        'tags=["bfx", "example"]', 'tags=["example"]'
    )
    if plain.count(f'dag_id="{PLAIN}"') != 1 or plain.count('tags=["example"]') != 1:
        raise BenchError("could not derive the unrouted copy of warehouse_batch.py")
    target = folder / f"{PLAIN}.py"
    target.write_text(plain, encoding="utf-8")
    return target


def parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


# ---------------------------------------------------------------------------------------------
# CPU seconds
# ---------------------------------------------------------------------------------------------


def _cpu_of(pids: list[int]) -> float:
    """user + system of the live processes, plus the children times of the ones they reaped
    (a task process that ended within the window is in its supervisor's children times)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs), from ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    ticks = [int(x) for x in fields]
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks))  # not idle, iowait, guest
    return busy / os.sysconf("SC_CLK_TCK")


def _postmasters() -> list[int]:
    """PostgreSQL server processes whose parent is not one: the postmaster(s) on this host."""
    found = []
    for proc in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "postgres":
                parent = psutil.Process(proc.info["ppid"]) if proc.info["ppid"] else None
                if parent is None or parent.name() != "postgres":
                    found.append(proc.pid)
    return found


class CpuMeter:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.postmasters = _postmasters()

    def _pg_pids(self) -> list[int]:
        pids = []
        for pid in self.postmasters:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                pids += [pid] + [c.pid for c in root.children(recursive=True)]
        return pids

    def sample(self) -> dict[str, float]:
        out = {name: _cpu_of(self.deployment.component_pids(name)) for name in COMPONENTS}
        out["deployment"] = sum(out[name] for name in COMPONENTS)
        out["pg"] = _cpu_of(self._pg_pids()) if self.postmasters else float("nan")
        out["machine"] = _machine_busy()
        return out


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    round: str
    kind: str
    dag_id: str
    run_id: str
    state: str
    seconds: float
    processes: int
    states: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (float("nan"), float("nan"))
    #: XCom writes of this run the API server finished in the window, and their summed
    #: request time in seconds (its access log: ``duration_us``).
    xcom_writes: int = 0
    xcom_seconds: float = 0.0
    #: When the user acted (UTC), and the run's task instances as the REST API gave them at
    #: its end: the timeline of the run (:func:`timeline`).
    since: datetime | None = None
    tis: list[dict[str, Any]] = field(default_factory=list)
    ended: datetime | None = None
    #: Seconds from each task process's last log line to the end date Airflow recorded, by
    #: task id (:func:`report_lags`): Airflow's supervisor sometimes reports an end late.
    lags: dict[str, float] = field(default_factory=dict)

    @property
    def late_ends(self) -> int:
        return sum(1 for lag in self.lags.values() if lag > LATE_END_SECONDS)

    @property
    def timed(self) -> bool:
        return self.kind in KINDS


_ACCESS = re.compile(
    r"^(?P<ts>\S+Z) .*request finished.*duration_us=(?P<us>\d+).*"
    r"method=POST path=/execution/xcoms/(?P<dag>[^/\s]+)/(?P<run>[^/\s]+)/"
)


def xcom_writes(log_path: Path, dag_id: str, run_id: str, since: datetime) -> tuple[int, float]:
    """The XCom writes (``POST /execution/xcoms/<dag>/<run>/...``) of one run that the API
    server finished after ``since``, and their summed request time in seconds, read from its
    access log. Every XCom a task writes (its return value, each key of a ``multiple_outputs``
    task, each operator extra link) and each output skip ahead replays is one such request."""
    count, seconds = 0, 0.0
    quoted = quote(run_id, safe="")
    with open(log_path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            m = _ACCESS.match(line)
            if m is None or m["dag"] != dag_id or m["run"] not in (run_id, quoted):
                continue
            when = datetime.fromisoformat(m["ts"].replace("Z", "+00:00"))
            if when >= since:
                count += 1
                seconds += int(m["us"]) / 1e6
    return count, seconds


#: An end Airflow recorded this long after the task's last log line was reported late.
LATE_END_SECONDS = 3.0


def report_lags(
    logs: Path, dag_id: str, run_id: str, tis: list[dict[str, Any]]
) -> dict[str, float]:
    """Seconds from the last line each task process logged (its task log's last timestamp) to
    the end date Airflow recorded for that try, by task id (unmapped tries with a process).

    Normally a few tens of milliseconds. Airflow's task supervisor (Airflow 3.3.2) sometimes
    reports an end up to ``[workers] min_heartbeat_interval`` (5 s) late, in plain and routed
    runs alike: when the task process's last socket closes before the process can be reaped,
    the supervisor's loop waits for its next heartbeat tick to notice the exit. A run's wall
    time moves by those seconds whenever the late task is on its critical path, so the report
    counts them."""
    out: dict[str, float] = {}
    for ti in tis:
        end = parse_time(ti.get("end_date"))
        if not ti.get("hostname") or end is None or ti.get("map_index", -1) != -1:
            continue
        path = (
            logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={ti['task_id']}"
            / f"attempt={ti.get('try_number', 1)}.log"
        )  # fmt: skip
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        last: datetime | None = None
        for line in lines:
            m = _LOG_TIME.search(line)
            if m is not None:
                last = parse_time(m["ts"])
        if last is not None:
            out[str(ti["task_id"])] = (end - last).total_seconds()
    return out


_LOG_TIME = re.compile(r'"timestamp":\s*"(?P<ts>[^"]+)"')


class Bench:
    def __init__(self, deployment: Deployment, catalog: CatalogSetup) -> None:
        self.deployment = deployment
        self.catalog = catalog
        self.api = deployment.api
        self.meter = CpuMeter(deployment)
        self.samples: list[Sample] = []

    # -- one window ----------------------------------------------------------------------
    def window(self, rnd: str, kind: str, dag_id: str, begin: Callable[[], str]) -> Sample:
        """``begin()`` starts (or restarts) a run and returns its id; the window ends when the
        REST API reports that run terminal with an end date inside the window."""
        load0, cpu0 = loadavg(), self.meter.sample()
        since = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        run_id = begin()
        deadline = t0 + RUN_TIMEOUT
        while True:
            run = self.api.run(dag_id, run_id)
            end = parse_time(run.get("end_date"))
            if run.get("state") in ("success", "failed") and end is not None and end >= since:
                seconds = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{dag_id}/{run_id} still {run.get('state')!r} after {RUN_TIMEOUT:.0f} s:"
                    f" {self.api.task_states(dag_id, run_id)}"
                )
            time.sleep(POLL_SECONDS)
        cpu1, load1 = self.meter.sample(), loadavg()
        writes, write_seconds = xcom_writes(
            self.deployment.log_path("api-server"), dag_id, run_id, since
        )
        tis = self.api.task_instances(dag_id, run_id)
        starts = [parse_time(ti.get("start_date")) for ti in tis if ti.get("hostname")]
        processes = sum(1 for start in starts if start is not None and start >= since)
        sample = Sample(
            round=rnd,
            kind=kind,
            dag_id=dag_id,
            run_id=run_id,
            state=str(run["state"]),
            seconds=seconds,
            processes=processes,
            states=dict(Counter(str(ti.get("state")) for ti in tis)),
            cpu={k: cpu1[k] - cpu0[k] for k in cpu0},
            load=(load0, load1),
            xcom_writes=writes,
            xcom_seconds=write_seconds,
            since=since,
            tis=tis,
            ended=end,
            lags=report_lags(self.deployment.airflow_home / "logs", dag_id, run_id, tis),
        )
        self.samples.append(sample)
        log(
            f"round {rnd}: {kind:<15} {sample.seconds:7.2f} s  {sample.state:<7}"
            f" processes={processes}  states={sample.states}"
            f"  cpu deployment={sample.cpu['deployment']:.1f} s"
            f"  xcom writes={writes} ({write_seconds:.1f} s in the api-server)"
        )
        return sample

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> Callable[[], str]:
        return lambda: self.api.trigger(dag_id, conf=conf)

    # -- checks ---------------------------------------------------------------------------
    @staticmethod
    def expect(sample: Sample, state: str, states: dict[str, int], processes: int | range) -> None:
        wanted = processes if isinstance(processes, range) else range(processes, processes + 1)
        if (sample.state, sample.states) != (state, states) or sample.processes not in wanted:
            raise BenchError(
                f"{sample.dag_id}/{sample.run_id} ({sample.kind}): {sample.state},"
                f" task states {sample.states}, {sample.processes} task processes;"
                f" expected {state}, {states}, {processes}"
            )

    def batch(self, sample: Sample, status: tuple[str, str]) -> Any:
        """The run's batch row once the DAG callback closed it, with (ExecutionStatus,
        NextLoadStatus) == ``status``."""
        row = wait_batch_closed(self.catalog, self.deployment, sample.dag_id, sample.run_id)
        if (row.ExecutionStatus, row.NextLoadStatus) != status:
            raise BenchError(
                f"batch of {sample.dag_id}/{sample.run_id}: {row.ExecutionStatus}/"
                f"{row.NextLoadStatus}, expected {status[0]}/{status[1]}"
            )
        return row

    def no_plain_rows(self) -> None:
        rows = self.catalog.rows(self.deployment, PLAIN)
        if rows:
            raise BenchError(f"the unrouted DAG wrote {len(rows)} catalog rows")

    def failed_at_48(self, sample: Sample) -> None:
        states = self.api.task_states(sample.dag_id, sample.run_id)
        if sample.state != "failed" or states.get((FAILED_TASK, -1)) != "failed":
            raise BenchError(f"{sample.dag_id}/{sample.run_id}: {sample.state}, {states}")
        if sample.states.get("success") != 47:
            raise BenchError(f"{sample.dag_id}/{sample.run_id}: {sample.states}")

    def lineage_closed(self) -> bool:
        batches = [r for r in self.catalog.rows(self.deployment, ROUTED) if r.TaskId is None]
        if not batches:
            return True
        last = max(batches, key=lambda r: r.ExecutionID)
        return last.EndTime is not None and last.NextLoadStatus == "P"

    # -- the scenarios --------------------------------------------------------------------
    def fresh(self, rnd: str, routed: bool, kind: str | None = None) -> Sample:
        if routed:
            if not self.lineage_closed():
                log("the routed lineage is open: one untimed run to close it")
                closing = self.window(rnd, "routed_closing", ROUTED, self.trigger(ROUTED))
                if closing.state != "success":
                    raise BenchError(f"closing run {closing.run_id}: {closing.state}")
                self.batch(closing, ("S", "P"))
                if not self.lineage_closed():
                    raise BenchError("the routed lineage is still open after a closing run")
            sample = self.window(rnd, kind or "routed_fresh", ROUTED, self.trigger(ROUTED))
            self.expect(sample, "success", {"success": TASKS}, TASKS)
            row = self.batch(sample, ("S", "P"))
            if row.AttemptNumber != 1:
                raise BenchError(f"routed fresh run {sample.run_id}: attempt {row.AttemptNumber}")
            tasks = self.catalog.task_rows(self.deployment, ROUTED, sample.run_id)
            if len(tasks) != TASKS:
                raise BenchError(f"routed run {sample.run_id}: {len(tasks)} task rows")
        else:
            sample = self.window(rnd, kind or "plain_fresh", PLAIN, self.trigger(PLAIN))
            self.expect(sample, "success", {"success": TASKS}, TASKS)
            self.no_plain_rows()
        return sample

    def routed_resume(self, rnd: str) -> Sample:
        failed = self.window(rnd, "routed_failed", ROUTED, self.trigger(ROUTED, FAIL_CONF))
        self.failed_at_48(failed)
        batch1 = self.batch(failed, ("F", "R"))
        sample = self.window(rnd, "routed_resumed", ROUTED, self.trigger(ROUTED))
        # Skip ahead (0106): most of the 47 finished loads are skipped with no task process.
        # At least the five first loads and the five that run; at most every task (a load that
        # Airflow scheduled while the first one skipped ahead decides for itself).
        self.expect(sample, "success", {"skipped": 47, "success": 5}, range(10, TASKS + 1))
        ran = {
            t for (t, _), s in self.api.task_states(ROUTED, sample.run_id).items() if s == "success"
        }
        if ran != RESUMED_TASKS:
            raise BenchError(f"resumed run {sample.run_id} ran {sorted(ran)}")
        batch2 = self.batch(sample, ("S", "P"))
        if (batch2.OriginalExecutionID, batch2.AttemptNumber) != (batch1.ExecutionID, 2):
            raise BenchError(f"resumed run {sample.run_id} did not resume batch {batch1}")
        return sample

    def routed_in_place(self, rnd: str) -> Sample:
        """The in-place path: the failed routed run resumed by ``POST /bfx/api/v1/dags/{dag}/
        resume`` (Airflow clears its failed and upstream_failed tasks), timed from the call
        until the run is terminal again."""
        failed = self.window(rnd, "routed_failed", ROUTED, self.trigger(ROUTED, FAIL_CONF))
        self.failed_at_48(failed)
        batch1 = self.batch(failed, ("F", "R"))
        self.forget_conf(failed.run_id, ROUTED)  # untimed: the cause of the failure is fixed
        answers: list[dict[str, Any]] = []

        def resume() -> str:
            answers.append(self.api.call("POST", f"/bfx/api/v1/dags/{ROUTED}/resume", json={}))
            return failed.run_id

        sample = self.window(rnd, "routed_in_place", ROUTED, resume)
        if set(answers[0]["cleared"]) != RESUMED_TASKS:
            raise BenchError(f"resume of {failed.run_id}: {answers[0]}")
        self.expect(sample, "success", {"success": TASKS}, len(RESUMED_TASKS))
        batch2 = self.batch(sample, ("S", "P"))
        if batch2.ExecutionID != batch1.ExecutionID:
            raise BenchError(f"in-place resume of {failed.run_id} did not reopen {batch1}")
        return sample

    def plain_clear(self, rnd: str) -> Sample:
        failed = self.window(rnd, "plain_failed", PLAIN, self.trigger(PLAIN, FAIL_CONF))
        self.failed_at_48(failed)
        self.forget_conf(failed.run_id)  # untimed: the cause of the failure is fixed
        cleared: list[dict[str, Any]] = []

        def clear() -> str:
            cleared.extend(
                self.api.clear_task(
                    PLAIN,
                    failed.run_id,
                    [FAILED_TASK],
                    include_downstream=True,
                    only_failed=False,
                    reset_dag_runs=True,
                )
            )
            return failed.run_id

        sample = self.window(rnd, "plain_clear", PLAIN, clear)
        if {ti["task_id"] for ti in cleared} != RESUMED_TASKS:
            raise BenchError(f"clear of {failed.run_id}: {[ti['task_id'] for ti in cleared]}")
        self.expect(sample, "success", {"success": TASKS}, len(RESUMED_TASKS))
        self.no_plain_rows()
        return sample

    def forget_conf(self, run_id: str, dag_id: str = PLAIN) -> None:
        """Empty ``dag_run.conf`` of one run in the metadata DB: the REST API cannot (PATCH
        dagRuns takes state and note only), and a cleared run keeps its conf."""
        engine = create_engine(self.deployment.metadata_db_url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                done = conn.execute(
                    text(
                        "UPDATE dag_run SET conf = CAST('{}' AS JSONB)"
                        " WHERE dag_id = :dag_id AND run_id = :run_id"
                    ),
                    {"dag_id": dag_id, "run_id": run_id},
                ).rowcount
        finally:
            engine.dispose()
        if done != 1:
            raise BenchError(f"conf of {dag_id}/{run_id}: {done} rows updated")


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def timeline(sample: Sample) -> list[str]:
    """Seconds from the user's action to each task instance's queued, start and end times: the
    tasks that had a process, one line each, then what the others add up to, then the run's
    end. Where a run's time goes (decision 0114)."""
    assert sample.since is not None
    since = sample.since

    def at(value: Any) -> float | None:
        when = parse_time(value)
        return None if when is None else (when - since).total_seconds()

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:6.2f}"

    rows: list[tuple[float, dict[str, Any], tuple[float | None, ...]]] = []
    quiet: list[tuple[str, float]] = []
    for ti in sample.tis:
        times = (at(ti.get("queued_when")), at(ti.get("start_date")), at(ti.get("end_date")))
        if times[1] is not None and times[1] < 0:
            continue  # ran before the action (the failed run's tries a clear leaves alone)
        if ti.get("hostname"):
            rows.append((times[1] if times[1] is not None else 1e9, ti, times))
        elif times[2] is not None:
            quiet.append((str(ti["task_id"]), times[2]))
    head = f"  {'task':<16} {'state':<8} {'queued':>6} {'start':>6} {'end':>6}"
    out = [head + "  (s from the action)"]
    for _, ti, (queued, start, end) in sorted(rows, key=lambda r: r[0]):
        lag = sample.lags.get(str(ti["task_id"]))
        late = ""
        if lag is not None and lag > LATE_END_SECONDS:
            late = f"  end reported {lag:.1f} s after its last log line"
        out.append(
            f"  {ti['task_id']:<16} {str(ti.get('state')):<8} {show(queued)} {show(start)}"
            f" {show(end)}{late}"
        )
    # Those with no process end together, one group per skip message (decision 0106).
    told: dict[float, list[str]] = {}
    for task_id, end in quiet:
        told.setdefault(round(end, 2), []).append(task_id)
    for end, task_ids in sorted(told.items()):
        names = sorted(task_ids)
        shown = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        out.append(f"  {len(names):>3} with no process, ended {end:6.2f}: {shown}")
    if sample.ended is not None:
        out.append(f"  the run ended at {(sample.ended - since).total_seconds():.2f} s")
    return out


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def median_of(samples: list[Sample], kind: str, what: Callable[[Sample], float]) -> float:
    values = [what(s) for s in samples if s.kind == kind]
    return statistics.median(values) if values else float("nan")


def report(
    rep: Report,
    args: argparse.Namespace,
    bench: Bench,
    facts: list[tuple[str, str]],
    loads: tuple[float, float],
    start_seconds: float,
    began: float,
) -> None:
    samples = bench.samples
    rep("bfx deployment benchmark")
    rep("========================")
    rep()
    rep("Machine")
    rep("-------")
    rep.table(["what", "value"], [list(f) for f in facts], "ll")
    rep(f"  1-minute load average: {loads[0]:.2f} before the first run,")
    rep(f"  {loads[1]:.2f} after the last one ({os.cpu_count()} logical CPUs)")
    rep()
    rep("Deployment")
    rep("----------")
    rep("  tests.deployment.harness.Deployment: api-server, scheduler, dag-processor, triggerer;")
    rep(
        f"  LocalExecutor, [core] parallelism {PARALLELISM}, PostgreSQL metadata DB, started in"
        f" {start_seconds:.0f} s"
    )
    rep(
        "  [workers] min_heartbeat_interval: "
        + (
            f"{args.min_heartbeat_interval} s (set for this run, routed and plain alike)"
            if args.min_heartbeat_interval is not None
            else "Airflow's default (5 s)"
        )
    )
    rep(
        "  [bfx] recovery_link: "
        + (
            "the provider's default (on: one XCom per routed try for the link)"
            if args.recovery_link == "on"
            else "False (set for this run: no operator extra link, no XCom for it; not the"
            " default, so the goals below are not judged on the defaults)"
        )
    )
    rep("  catalog: PostgreSQL, connection in AIRFLOW_CONN_BFX_CATALOG_DEFAULT, bfx catalog init")
    rep(
        f"  DAGs: {ROUTED} (tag bfx, routed) and {PLAIN} (same source, no tag);"
        f" {TASKS} tasks: five lines of ten loads, merge, publish (at most 5 tasks at once)"
    )
    rep(
        f"  rounds={args.rounds}; one untimed warm-up run of each DAG first; the variants"
        " alternate which goes first"
    )
    rep(
        f"  wall = time.perf_counter() from the trigger (or clear) call until GET dagRuns/<id>"
        f" says terminal (polled every {POLL_SECONDS} s)"
    )
    rep()
    rep("Runs")
    rep("----")
    rows = []
    for s in samples:
        rows.append(
            [
                s.round,
                LABELS[s.kind],
                s.state,
                f"{s.seconds:.2f}",
                str(s.processes),
                fmt(s.cpu.get("deployment", float("nan"))),
                fmt(s.cpu.get("pg", float("nan"))),
                fmt(s.cpu.get("machine", float("nan"))),
                str(s.xcom_writes),
                f"{s.xcom_seconds:.2f}",
                f"{s.late_ends}/{len(s.lags)}",
                f"{s.load[0]:.2f} -> {s.load[1]:.2f}",
            ]
        )
    rep.table(
        [
            "round",
            "run",
            "state",
            "wall s",
            "task procs",
            "CPU s deploy",
            "CPU s PG",
            "CPU s machine",
            "XCom writes",
            "their api s",
            "late ends",
            "load 1m",
        ],
        rows,
        "lllrrrrrrrrl",
    )
    rep(
        "  XCom writes: POST /execution/xcoms/<dag>/<run>/... of the run that the api-server"
        " finished in the window (its access log); their api s: the sum of their request times"
    )
    rep(
        "  task procs: task instances of the run started within the window (start_date) in a"
        " task process (hostname set)"
    )
    rep(
        f"  late ends: tries whose end Airflow recorded more than {LATE_END_SECONDS:.0f} s after"
        " the task's last log line, of those with a process (Airflow's supervisor noticing the"
        " exit on its next heartbeat tick, up to 5 s; plain and routed alike)"
    )
    rep(
        "  CPU s deploy: every process of the four components and their descendants (task"
        " processes included);"
    )
    rep(
        "  CPU s PG: the whole PostgreSQL server, shared with any other client; CPU s machine:"
        " all CPUs, /proc/stat"
    )
    rep()

    med = {k: median_of(samples, k, lambda s: s.seconds) for k in KINDS}
    fresh_ratio = med["routed_fresh"] / med["plain_fresh"]
    resume_ratio = med["routed_resumed"] / med["plain_clear"]
    in_place_ratio = med["routed_in_place"] / med["plain_clear"]
    rep("Medians (timed runs)")
    rep("--------------------")
    rows = []
    for k in KINDS:
        n = sum(1 for s in samples if s.kind == k)
        ratio = ""
        if k == "routed_fresh":
            ratio = f"{fresh_ratio:.3f} x plain fresh"
        elif k == "routed_resumed":
            ratio = f"{resume_ratio:.3f} x plain clear"
        elif k == "routed_in_place":
            ratio = f"{in_place_ratio:.3f} x plain clear"
        elif k == "plain_clear":
            ratio = f"{med[k] / med['plain_fresh']:.3f} x plain fresh"
        rows.append(
            [
                LABELS[k],
                str(n),
                f"{med[k]:.2f}",
                ratio,
                fmt(median_of(samples, k, lambda s: s.processes), 0),
                fmt(median_of(samples, k, lambda s: s.cpu["deployment"])),
                fmt(median_of(samples, k, lambda s: s.cpu["pg"])),
                fmt(median_of(samples, k, lambda s: s.cpu["machine"])),
                fmt(median_of(samples, k, lambda s: s.xcom_writes), 0),
                fmt(median_of(samples, k, lambda s: s.xcom_seconds), 2),
            ]
        )
    rep.table(
        [
            "measure",
            "runs",
            "wall s",
            "ratio",
            "task procs",
            "CPU s deploy",
            "CPU s PG",
            "CPU s machine",
            "XCom writes",
            "their api s",
        ],
        rows,
        "lrrlrrrrrr",
    )
    rep()
    rep("Deployment CPU seconds by component (medians)")
    rep("---------------------------------------------")
    rows = [
        [name] + [fmt(median_of(samples, k, lambda s, n=name: s.cpu[n])) for k in KINDS]
        for name in COMPONENTS
    ]
    rep.table(["component"] + [k.replace("_", " ") for k in KINDS], rows, "lrrrrr")
    rep("  the task processes are descendants of the scheduler (LocalExecutor workers)")
    rep()
    rep("Goals (performance issue)")
    rep("-------------------------")
    fresh_ok = fresh_ratio <= GOAL_FRESH
    cpu_fresh = {
        name: median_of(samples, f"{name}_fresh", lambda s: s.cpu["deployment"])
        for name in ("routed", "plain")
    }
    resume_ok = resume_ratio <= GOAL_RESUME
    rep.table(
        ["goal", "measured", "verdict"],
        [
            [
                f"routed fresh run <= {GOAL_FRESH:.2f}x plain fresh run (wall)",
                f"{med['routed_fresh']:.2f} s / {med['plain_fresh']:.2f} s = {fresh_ratio:.3f}x",
                verdict(fresh_ok),
            ],
            [
                f"routed fresh run <= {GOAL_FRESH_CPU:.2f}x plain fresh run (CPU, deployment)",
                f"{cpu_fresh['routed']:.1f} s / {cpu_fresh['plain']:.1f} s"
                f" = {cpu_fresh['routed'] / cpu_fresh['plain']:.3f}x",
                verdict(cpu_fresh["routed"] / cpu_fresh["plain"] <= GOAL_FRESH_CPU),
            ],
            [
                f"routed resumed new run <= {GOAL_RESUME:.2f}x plain clear + downstream (wall)",
                f"{med['routed_resumed']:.2f} s / {med['plain_clear']:.2f} s = {resume_ratio:.3f}x",
                verdict(resume_ok),
            ],
            [
                f"routed resume in place <= {GOAL_RESUME:.2f}x plain clear + downstream (wall)",
                f"{med['routed_in_place']:.2f} s / {med['plain_clear']:.2f} s"
                f" = {in_place_ratio:.3f}x",
                verdict(in_place_ratio <= GOAL_RESUME),
            ],
        ],
        "lll",
    )
    resumed_procs = median_of(samples, "routed_resumed", lambda s: s.processes)
    clear_procs = median_of(samples, "plain_clear", lambda s: s.processes)
    rep(
        f"  task processes: routed resumed {resumed_procs:.0f} (the finished loads Airflow had"
        f" not scheduled yet are skipped ahead, with no process: decision 0106),"
        f" plain clear {clear_procs:.0f}"
    )
    writes = median_of(samples, "routed_resumed", lambda s: s.xcom_writes)
    write_s = median_of(samples, "routed_resumed", lambda s: s.xcom_seconds)
    rep(
        f"  XCom writes: routed resumed {writes:.0f}, {write_s:.1f} s of api-server request"
        f" time, one after another through the first task's supervisor (a new run holds none"
        f" of the failed run's XComs: every completed load's return value and keys are written"
        f" again; decision 0106), against"
        f" {median_of(samples, 'plain_clear', lambda s: s.xcom_writes):.0f} for Airflow's clear"
    )
    for kind in ("routed_resumed", "plain_clear"):
        runs = [s for s in samples if s.kind == kind and s.timed]
        if not runs:
            continue
        shown = [("last", runs[-1])]
        slowest = max(runs, key=lambda s: s.seconds)
        if slowest is not runs[-1]:
            shown.append(("slowest", slowest))  # an outlier is read, not only outvoted
        for which, sample in shown:
            rep()
            rep(f"Timeline of the {which} {LABELS[kind]!r} (round {sample.round})")
            rep("-" * 40)
            for line in timeline(sample):
                rep(line)
    rep()
    rep(f"Total run time: {time.perf_counter() - began:.0f} s")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def heartbeat_env(seconds: int | None) -> dict[str, str]:
    """The deployment's environment for ``--min-heartbeat-interval``: Airflow reads it as
    ``[workers] min_heartbeat_interval`` (an integer option: ``conf.getint``)."""
    if seconds is None:
        return {}
    return {"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(seconds)}


def link_env(recovery_link: str) -> dict[str, str]:
    """The deployment's environment for ``--recovery-link``: ``[bfx] recovery_link``."""
    return {} if recovery_link == "on" else {"AIRFLOW__BFX__RECOVERY_LINK": "False"}


def _bytecode_fact() -> str:
    """Whether Airflow's modules have compiled bytecode (a pip install has; ``scripts/bootstrap``
    compiles it): without it every task process compiles Airflow from source."""
    import airflow

    cache = Path(airflow.__file__).parent / "__pycache__"
    have = any(cache.glob("*.pyc")) if cache.is_dir() else False
    dont = os.environ.get("PYTHONDONTWRITEBYTECODE", "(unset)")
    return f"Airflow compiled: {'yes' if have else 'NO'}; PYTHONDONTWRITEBYTECODE={dont}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BFX_TEST_PG_URL"),
        help="a PostgreSQL URL whose role may CREATE DATABASE (default: $BFX_TEST_PG_URL)",
    )
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--recovery-link",
        choices=("on", "off"),
        default="on",
        help="[bfx] recovery_link for the whole deployment (default: on, the provider's"
        " default): off leaves out the operator extra link 'Recovery' and its XCom per try"
        " (decision 0112), to show what the link costs; the goals are on the defaults",
    )
    parser.add_argument(
        "--min-heartbeat-interval",
        type=int,
        default=None,
        help="set Airflow's [workers] min_heartbeat_interval for the whole deployment (default:"
        " Airflow's, 5 s): how late, at most, a task supervisor notices a task process's exit"
        " (the 'late ends' column)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.pg_url:
        parser.error("no PostgreSQL URL: pass --pg-url or set BFX_TEST_PG_URL")

    began = time.perf_counter()
    os.environ.pop("BFX_EXAMPLE_COPY_DIR", None)  # no copy log: the loads do no file I/O
    pg_engine = create_engine(args.pg_url, poolclass=NullPool)
    facts = machine_facts(pg_engine)
    pg_engine.dispose()
    facts = [f for f in facts if f[0] != "SQLite (library)"]
    facts.insert(4, ("Airflow", version("apache-airflow")))
    facts.insert(5, ("psutil", psutil.__version__))
    facts.append(("bytecode", _bytecode_fact()))

    work = Path(tempfile.mkdtemp(prefix="bfx-bench-deployment-"))
    rep = Report()
    catalog: CatalogSetup | None = None
    deployment: Deployment | None = None
    ok = False
    try:
        plain_file = write_plain_copy(work)
        shown = make_url(args.pg_url).render_as_string(hide_password=True)
        log(f"creating the catalog database on {shown}")
        catalog = CatalogSetup.create("env", args.pg_url)
        deployment = Deployment(
            work / "deployment",
            pg_server_url=args.pg_url,
            dags=[SOURCE_DAG, plain_file],
            env={
                **catalog.env(),
                **heartbeat_env(args.min_heartbeat_interval),
                **link_env(args.recovery_link),
            },
            parallelism=PARALLELISM,
            start_timeout=300.0,
        )
        log("starting the deployment (db migrate, four components)")
        deployment.start()
        log(f"healthy after {deployment.start_seconds:.0f} s; bfx catalog init")
        catalog.after_start(deployment)
        for dag_id in (ROUTED, PLAIN):
            deployment.api.wait_dag_parsed(dag_id, timeout=180)
        bench = Bench(deployment, catalog)
        if not bench.meter.postmasters:
            log("no PostgreSQL server process on this host: no PG CPU figures")

        load_start = loadavg()
        log("warm-up: one routed, one plain run (untimed)")
        bench.fresh("warm-up", True, kind="warmup_routed")
        bench.fresh("warm-up", False, kind="warmup_plain")
        for i in range(args.rounds):
            rnd = str(i + 1)
            order = (True, False) if i % 2 == 0 else (False, True)
            log(f"round {rnd}/{args.rounds}: fresh runs")
            for routed in order:
                bench.fresh(rnd, routed)
            log(f"round {rnd}/{args.rounds}: resume after a failure at {FAILED_TASK}")
            for routed in order:
                if routed:
                    bench.routed_resume(rnd)
                    bench.routed_in_place(rnd)
                else:
                    bench.plain_clear(rnd)
        load_end = loadavg()
        report(
            rep,
            args,
            bench,
            facts,
            (load_start, load_end),
            deployment.start_seconds or float("nan"),
            began,
        )
        ok = True
    except (BenchError, ApiError, DeploymentError, TimeoutError, AssertionError) as err:
        log(f"ERROR: {err}")
        if deployment is not None:
            log(f"the deployment's logs are kept in {deployment.logs_dir}")
        return 1
    finally:
        if deployment is not None:
            log("stopping the deployment")
            deployment.stop()
        if catalog is not None:
            catalog.drop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(rep.lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
