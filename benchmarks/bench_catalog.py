#!/usr/bin/env python
"""Benchmark of the catalog store: statements, round trips and latency per transition.

Not a test (pytest never collects it): run it by hand, see ``benchmarks/README.md``::

    .venv/bin/python benchmarks/bench_catalog.py [--engines sqlite,postgresql]
        [--history 1000000] [--transitions 2000] [--quick] [--output FILE]

What it measures, on SQLite (a file in WAL mode) and on PostgreSQL over loopback TCP:

a. statements and round trips of each transition type, counted with SQLAlchemy engine events
   (``before_cursor_execute``, ``begin``, ``commit``, plus a wrapper around the dialect's
   ``do_ping`` for the pool's pre-ping) and, on PostgreSQL, independently on the wire by a small
   TCP proxy that parses the client's protocol messages (every simple ``Query`` and every
   ``Sync`` waits for the server's ``ReadyForQuery``: one round trip each);
b. p50/p99 latency of task start and task end (success), ``time.perf_counter`` around the store
   call, with a small history (1,000 executions);
c. the same with a large history (1,000,000 executions by default), seeded in SQL, and the ratio
   p50(large)/p50(small), the two catalogs timed in turn, one run of each after the other
   (:func:`time_in_turn`); on PostgreSQL, the same-shape floor of the same run (raw psycopg2,
   ``pg_floor.py``), which judges goal 1 (p50 <= 2x floor). A per-statement breakdown (timed
   with the cursor events) says which statement dominates.

Progress goes to stderr; the report goes to stdout (and ``--output``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event, make_url, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from airflow_provider_bfx.catalog import keys  # noqa: E402
from airflow_provider_bfx.catalog.codes import ExecutionStatus  # noqa: E402
from airflow_provider_bfx.catalog.engine import create_catalog_engine  # noqa: E402
from airflow_provider_bfx.catalog.machine import TaskOutcome  # noqa: E402
from airflow_provider_bfx.catalog.schema import build_schema  # noqa: E402
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pg_floor  # noqa: E402

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg2://bfx_test:bfx_test@127.0.0.1:5432/postgres"

# Shape of the seeded history (and of the benchmark's own DAG runs).
TASKS = 20  # tasks per DAG run
ROWS_PER_RUN = TASKS + 1  # one batch row + one row per task
DAGS = 500  # DAGs in the seeded catalog (10,500 packages)
BENCH_DAGS = 10  # the latency workload cycles over dag_0000 .. dag_0009
SMALL_HISTORY = 1_000
OWNER = "bench-host:1"

# Goals the figures are compared with.
# Issue 12, goal 1: task start and task end <= 2 round trips, batch start <= 4 (other
# transitions keep the earlier 3); p50 <= 2x the same-shape floor measured in the same run on
# loopback PostgreSQL (pg_floor.py; the "~1 ms" is printed too, as a second line),
# <= 0.5 ms on SQLite.
GOAL_ROUND_TRIPS = 3
GOAL_ROUND_TRIPS_BY_PREFIX = {"task start": 2, "task end": 2, "batch start": 4}
GOAL_PG_FLOOR_RATIO = 2.0
GOAL_PG_P50_MS = 1.0
# Which floor shape judges which transition (pg_floor.SHAPES: the two floors).
FLOOR_OF = {"task start": pg_floor.START_4RT, "task end": pg_floor.END_INSERT}
GOAL_SQLITE_P50_MS = 0.5
GOAL_RATIO = 1.1  # issue 12, goal 3: p50 at 1,000,000 executions <= 1.1x p50 at 1,000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def machine_facts(pg_engine: Engine | None) -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    facts = [
        ("CPU", cpu),
        ("cores (logical CPUs)", str(os.cpu_count())),
        ("RAM", ram),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLAlchemy", sqlalchemy.__version__),
        (
            "SQLite (library)",
            sqlite3.sqlite_version + " (file, journal_mode=WAL, synchronous=NORMAL)",
        ),
    ]
    try:
        import psycopg2

        facts.append(("psycopg2", psycopg2.__version__.split()[0]))
    except ImportError:
        pass
    if pg_engine is not None:
        with pg_engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar_one()
            settings = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar_one()
                for name in ("ssl", "shared_buffers", "synchronous_commit", "fsync")
            }
        detail = ", ".join(f"{k}={v}" for k, v in settings.items())
        facts.append(("PostgreSQL server", f"{version} on 127.0.0.1 (loopback TCP; {detail})"))
    return facts


# ---------------------------------------------------------------------------------------------
# Counting: engine events, and the wire (PostgreSQL)
# ---------------------------------------------------------------------------------------------


def statement_label(sql: str) -> str:
    """A short, stable name for a statement the store sends."""
    s = " ".join(sql.replace('"', "").split())
    if ";" in s.rstrip().rstrip(";") and not s.lower().startswith("prepare "):
        # PostgreSQL (decisions 0101, 0105): BEGIN, queued writes, a PREPARE and the generic
        # plan's SET LOCAL travel in front of a statement, in one query.
        parts = [part.strip() for part in _split_statements(s) if part.strip()]
        shown = [
            "BEGIN" if p.lower() == "begin" else statement_label(p)
            for p in parts
            if not p.lower().startswith("set local plan_cache_mode")
        ]
        return " + ".join(shown)
    low = s.lower()
    if low.startswith("begin"):
        return "BEGIN IMMEDIATE"
    if low.startswith("prepare "):
        return "PREPARE " + _prepared_label(s.split()[1])
    if low.startswith("execute "):
        return _prepared_label(s.split()[1].split("(")[0]) + " (prepared)"
    if low.startswith("select") and "p_nls" in low:
        return "SELECT task-start facts (locks the batch row)"
    if low.startswith("select") and "t_status" in low:
        return "SELECT task-end facts (locks the batch row)"
    if low.startswith("select") and "prev_failed" in low:
        return "SELECT batch-start facts"
    words = s.split()
    verb = words[0].upper()
    if verb == "INSERT":
        return f"INSERT {words[2].split('.')[-1].lower()}"
    if verb in ("UPDATE", "DELETE"):
        table = (words[1] if verb == "UPDATE" else words[2]).split(".")[-1].lower()
        where = low.split(" where ", 1)
        col = where[1].split()[0].split(".")[-1] if len(where) > 1 else "?"
        return f"{verb} {table} WHERE {col}"
    lock = " FOR UPDATE" if "for update" in low or "for no key update" in low else ""
    return f"{verb} {' '.join(words[1:4])}...{lock}"[:70]


def _split_statements(s: str) -> list[str]:
    """``;``-separated statements of one query; a PREPARE's body is one with it (it holds no
    ``;`` of its own: the store's SQL has none in literals)."""
    return s.split(";")


_PREPARED = {
    "task_facts": "SELECT task-start facts (locks the batch row)",
    "end_facts": "SELECT task-end facts (locks the batch row)",
    "batch_facts_1": "SELECT batch-start facts",
    "batch_facts_0": "SELECT batch-start facts (plan)",
}


def _prepared_label(name: str) -> str:
    """``bfx_<label>_<token>_<n>``, the name of a prepared facts query, as its label."""
    label = name.removeprefix("bfx_").rsplit("_", 2)[0]
    return _PREPARED.get(label, label)


class Probe:
    """Counts and times what one engine does, with SQLAlchemy events and two dialect wrappers.

    Besides the counts it keeps a timeline of marks (pool pre-ping, ``begin``, each statement's
    start and end, COMMIT's start and end) from which :func:`timeline` cuts a call into
    database time and the Python time between statements.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reset()
        self.last_sql: dict[str, tuple[str, Any]] = {}
        dialect = engine.dialect
        self._orig = (dialect.do_ping, dialect.do_commit)
        orig_ping, orig_commit = self._orig

        def timed_ping(dbapi_connection: Any) -> bool:
            t0 = time.perf_counter()
            try:
                return orig_ping(dbapi_connection)
            finally:
                self.pings += 1
                self.ping_seconds += time.perf_counter() - t0

        def timed_commit(dbapi_connection: Any) -> None:
            self.marks.append(("commit", "COMMIT", time.perf_counter()))
            try:
                orig_commit(dbapi_connection)
            finally:
                self.marks.append(("commit_end", "COMMIT", time.perf_counter()))

        self._wrapped = (timed_ping, timed_commit)
        self.attached = False
        self.attach()

    def _listeners(self) -> list[tuple[str, Any]]:
        return [
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("begin", self._begin),
            ("commit", self._commit),
            ("commit", self._commit_starts),
        ]

    def attach(self) -> None:
        """Listen (the counts and the timeline need it)."""
        if self.attached:
            return
        for name, fn in self._listeners():
            event.listen(self.engine, name, fn)
        # First of the commit listeners: on PostgreSQL the folding engine's (decision 0101)
        # sends the queued writes with COMMIT there, before the dialect's do_commit.
        with suppress(AttributeError, IndexError):  # insert=True is not honoured here
            listeners = self.engine.dispatch.commit.listeners  # type: ignore[attr-defined]
            listeners.appendleft(listeners.pop())
        dialect = self.engine.dialect
        dialect.do_ping, dialect.do_commit = self._wrapped  # type: ignore[method-assign]
        self.attached = True

    def detach(self) -> None:
        """Stop listening: the latency is timed without the probe, whose listeners run inside
        each call (labelling a statement reads its whole text: tens of microseconds for the
        facts query) and are no part of the store."""
        if not self.attached:
            return
        for name, fn in self._listeners():
            event.remove(self.engine, name, fn)
        dialect = self.engine.dialect
        dialect.do_ping, dialect.do_commit = self._orig  # type: ignore[method-assign]
        self.attached = False

    def reset(self) -> None:
        self.statements = 0  # SQL the store sent (not BEGIN IMMEDIATE)
        self.begin_statements = 0  # BEGIN IMMEDIATE (SQLite engine's begin hook)
        self.begins = 0  # SQLAlchemy 'begin' events
        self.commits = 0  # SQLAlchemy 'commit' events
        self.pings = 0  # pool pre-pings
        self.ping_seconds = 0.0
        self.marks: list[tuple[str, str, float]] = []

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        label = statement_label(statement)
        if label == "BEGIN IMMEDIATE":
            self.begin_statements += 1
        else:
            self.statements += 1
            label = f"#{self.statements} {label}"
            self.last_sql[label.split(" ", 1)[1]] = (statement, parameters)
        self.marks.append(("stmt", label, time.perf_counter()))

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.marks.append(("stmt_end", "", time.perf_counter()))

    def _begin(self, conn: Any) -> None:
        self.begins += 1
        self.marks.append(("begin", "", time.perf_counter()))

    def _commit(self, conn: Any) -> None:
        self.commits += 1

    def _commit_starts(self, conn: Any) -> None:
        self.marks.append(("commit", "COMMIT", time.perf_counter()))


PYTHON_BEFORE_FIRST = "Python: build #1 (construct, cache key, bind)"


def timeline(probe: Probe, t_start: float, t_end: float) -> dict[str, float]:
    """Cut one store call into named segments (ms): database calls and the Python between."""
    parts: dict[str, float] = defaultdict(float)
    prev_kind, prev_t, prev_label, last_stmt = "start", t_start, "", 0
    for kind, label, t in [*probe.marks, ("end", "", t_end)]:
        if prev_kind == "stmt":
            name = prev_label  # the statement itself: driver + database (+ network)
        elif prev_kind == "commit":
            name = "COMMIT"
        elif prev_kind == "start":
            name = "pool checkout (+ pre-ping)"
        elif kind == "stmt" and label.startswith("#"):
            n = int(label[1:].split(" ", 1)[0])
            name = PYTHON_BEFORE_FIRST if n == 1 else f"Python: between #{n - 1} and #{n}"
        elif kind in ("begin", "stmt"):  # BEGIN IMMEDIATE, or the begin event after it
            name = PYTHON_BEFORE_FIRST if prev_kind != "start" else "pool checkout (+ pre-ping)"
        elif kind == "commit":
            name = f"Python: after #{last_stmt} (rows, decision)"
        else:
            name = "Python: after COMMIT (pool return, logging)"
        parts[name] += (t - prev_t) * 1000
        if kind == "stmt" and label.startswith("#"):
            last_stmt = int(label[1:].split(" ", 1)[0])
        prev_kind, prev_t, prev_label = kind, t, label
    if probe.pings:
        parts["  of which pool pre-ping (SELECT 1)"] = probe.ping_seconds * 1000
    return dict(parts)


class WireCounter:
    """A loopback TCP proxy in front of PostgreSQL that counts the client's round trips.

    After the startup packet every frontend message is a type byte and a length. ``Q`` (simple
    query, psycopg2's only mode) and ``S`` (Sync, the extended protocol's) each make the client
    wait for ``ReadyForQuery``: one round trip each. Needs ``sslmode=disable`` to read them.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.lock = threading.Lock()
        self.messages: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.messages = []

    def round_trips(self) -> list[str]:
        with self.lock:
            return list(self.messages)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._client_to_server, args=(client, upstream), daemon=True
            ).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _client_to_server(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        startup = True
        try:
            while data := src.recv(65536):
                buf += data
                while True:
                    if startup:
                        if len(buf) < 8:
                            break
                        n = int.from_bytes(buf[:4], "big")
                        if len(buf) < n:
                            break
                        code = int.from_bytes(buf[4:8], "big")
                        buf = buf[n:]
                        startup = code >> 16 != 3  # SSL/GSS/cancel requests precede startup
                        continue
                    if len(buf) < 5:
                        break
                    n = int.from_bytes(buf[1:5], "big")
                    if len(buf) < 1 + n:
                        break
                    kind, body, buf = buf[:1], buf[5 : 1 + n], buf[1 + n :]
                    if kind == b"Q":
                        sql = body.rstrip(b"\0").decode("utf-8", "replace").strip()
                        # The generic plan's SET LOCAL in front of a prepared statement sent
                        # outside a transaction (decision 0120) names nothing: the EXECUTE does.
                        if sql.upper().startswith("SET LOCAL PLAN_CACHE_MODE"):
                            sql = sql.split(";", 1)[-1].strip()
                        first = sql.split(None, 1)[0].upper() if sql else "?"
                        name = "SELECT 1" if sql.upper() == "SELECT 1" else first
                        with self.lock:
                            self.messages.append(name)
                    elif kind == b"S":
                        with self.lock:
                            self.messages.append("Sync")
                dst.sendall(data)  # counted before forwarding: complete when the call returns
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------------------------
# Catalogs: create, seed
# ---------------------------------------------------------------------------------------------


class Target:
    """One engine under test: how to make an empty catalog and how to seed it."""

    name: str

    def url(self, *, via_proxy: bool = False) -> str:
        raise NotImplementedError

    def fresh(self, label: str) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


class SqliteTarget(Target):
    name = "sqlite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bfx_bench_"))
        self.path = self.dir / "none.db"

    def url(self, *, via_proxy: bool = False) -> str:
        return f"sqlite:///{self.path}"

    def fresh(self, label: str) -> None:
        self.path = self.dir / f"catalog_{label}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        create_schema(self.url())

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresTarget(Target):
    name = "postgresql"

    def __init__(self, admin_url: str, database: str, keep: bool) -> None:
        self.admin_url = make_url(admin_url)
        self.database = database
        self.keep = keep
        self.proxy: WireCounter | None = None
        admin = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
        admin.dispose()

    def url(self, *, via_proxy: bool = False) -> str:
        url = self.admin_url.set(database=self.database)
        if via_proxy:
            if self.proxy is None:
                self.proxy = WireCounter(url.host or "127.0.0.1", url.port or 5432)
            url = url.set(host="127.0.0.1", port=self.proxy.port).update_query_dict(
                {"sslmode": "disable", "gssencmode": "disable"}
            )
        return url.render_as_string(hide_password=False)

    def fresh(self, label: str) -> None:
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS bfx CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS bfx")
        engine.dispose()
        create_schema(self.url())

    def cleanup(self) -> None:
        if self.keep:
            return
        admin = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        admin.dispose()


def create_schema(url: str) -> None:
    engine = create_catalog_engine(url)
    try:
        try:
            from airflow_provider_bfx.catalog.migrate import upgrade

            upgrade(engine)
        except ImportError:
            build_schema(engine.dialect.name).metadata.create_all(engine)
    finally:
        engine.dispose()


def _seed_sql(dialect: str, runs: int) -> list[str]:
    """INSERT ... SELECT statements that write ``runs`` DAG runs of history (21 rows each).

    Run g belongs to DAG d = g % 500 and is that DAG's run r = g / 500. Every 10th run of a DAG
    (r % 10 == 7, when a later run exists) fails: its batch row is F and one task is F, the
    others S. On even DAGs the next run resumes that lineage (batch R -> S, AttemptNumber 2, the
    succeeded tasks skipped as C with the prior AuditID, the failed one retried), and its success
    reset the lineage to P; on odd DAGs the next run is a full rerun, so the failed batch keeps
    F/R and its succeeded tasks keep the stamped NextLoadStatus C. ExecutionID = g * 21 + t + 1
    (t = 0 is the batch row), so ParentExecutionID, OriginalExecutionID, LineageID and AuditID are
    computed, not looked up, and stay consistent.
    """
    pg = dialect == "postgresql"
    p = "bfx." if pg else ""
    D, T, K = DAGS, TASKS, ROWS_PER_RUN  # noqa: N806

    def pad(expr: str, n: int) -> str:
        return f"lpad(({expr})::text, {n}, '0')" if pg else f"printf('%0{n}d', {expr})"

    def ts(seconds: str) -> str:
        if pg:
            return f"(TIMESTAMP '2024-01-01 00:00:00' + ({seconds}) * INTERVAL '1 second')"
        return f"(datetime('2024-01-01 00:00:00', '+' || ({seconds}) || ' seconds') || '.000000')"

    def day(days: str) -> str:
        if pg:
            return f"(TIMESTAMP '2024-01-01 00:00:00' + ({days}) * INTERVAL '1 day')"
        return f"(datetime('2024-01-01 00:00:00', '+' || ({days}) || ' days') || '.000000')"

    base = ts("0")
    dag = f"'dag_' || {pad('d', 4)}"
    run = f"'hist__' || {pad('r', 6)}"
    task = f"'task_' || {pad('t', 2)}"
    cols = (
        "executionid, parentexecutionid, originalexecutionid, externalexecutionid, packageid,"
        " executionstatus, nextloadstatus, attemptnumber, auditid, operatorfingerprint,"
        " itemfingerprint, leaseowner, leaseexpiresat, starttime, endtime, dagid, runid, taskid,"
        " mapindex, trynumber, lineageid, logicaldate, updatedat"
    )
    end = "CASE WHEN t = 0 THEN g * 60 + 50 ELSE g * 60 + t + 20 END"
    select_list = f"""
        g * {K} + t + 1,
        CASE WHEN t = 0 THEN NULL ELSE g * {K} + 1 END,
        CASE WHEN resumed = 1 THEN (g - {D}) * {K} + t + 1 ELSE g * {K} + t + 1 END,
        {dag} || '/' || {run}
            || CASE WHEN t = 0 THEN '' ELSE '/' || {task} || '/-1/1' END,
        CASE WHEN t = 0 THEN d + 1 ELSE {D} + d * {T} + t END,
        CASE WHEN t = 0 THEN CASE WHEN failed = 1 THEN 'F' ELSE 'S' END
             WHEN failed = 1 AND t = ft THEN 'F'
             WHEN resumed = 1 AND t <> pft THEN 'C'
             ELSE 'S' END,
        CASE WHEN failed = 1 AND odd = 1 AND (t = 0 OR t = ft) THEN 'R'
             WHEN failed = 1 AND odd = 1 THEN 'C'
             ELSE 'P' END,
        CASE WHEN resumed = 1 THEN 2 ELSE 1 END,
        CASE WHEN resumed = 1 AND t > 0 AND t <> pft THEN (g - {D}) * {K} + t + 1
             ELSE g * {K} + t + 1 END,
        NULL,
        '',
        CASE WHEN t = 0 THEN NULL ELSE 'worker-' || (g % 8) || ':' || (1000 + t) END,
        NULL,
        {ts("g * 60 + t")},
        {ts(end)},
        {dag},
        {run},
        CASE WHEN t = 0 THEN NULL ELSE {task} END,
        CASE WHEN t = 0 THEN NULL ELSE -1 END,
        CASE WHEN t = 0 THEN NULL ELSE 1 END,
        CASE WHEN resumed = 1 THEN (g - {D}) * {K} + 1 ELSE g * {K} + 1 END,
        {day("r")},
        {ts(end)}
    """
    derived = f"""
        SELECT g, t, g % {D} AS d, g / {D} AS r, (g % {D}) % 2 AS odd,
            CASE WHEN (g / {D}) % 10 = 7 AND g + {D} < {runs} THEN 1 ELSE 0 END AS failed,
            CASE WHEN (g / {D}) % 10 = 8 AND (g % {D}) % 2 = 0 THEN 1 ELSE 0 END AS resumed,
            1 + ((g % {D}) + (g / {D})) % {T} AS ft,
            1 + ((g % {D}) + (g / {D}) - 1) % {T} AS pft
    """
    # Package identity (migration 0002): DagId and TaskId, task packages named dag_id/task_id.
    pkg_cols = (
        "packageid, packagename, parentpackageid, isbatch, isenabled, retrylimit, createdat,"
        " updatedat, dagid, taskid"
    )
    if pg:
        packages = [
            f"INSERT INTO {p}package ({pkg_cols})"
            f" SELECT d + 1, {dag}, NULL, 1, 1, 3, {base}, {base}, {dag}, NULL"
            f" FROM generate_series(0, {D - 1}) AS d",
            f"INSERT INTO {p}package ({pkg_cols}) SELECT {D} + d * {T} + t, {dag} || '/' || {task},"
            f" d + 1, 0, 1, 3, {base}, {base}, {dag}, {task}"
            f" FROM generate_series(0, {D - 1}) AS d CROSS JOIN generate_series(1, {T}) AS t",
        ]
        executions = (
            f"INSERT INTO {p}execution ({cols}) SELECT {select_list} FROM ({derived}"
            f" FROM generate_series(0, {runs - 1}) AS g CROSS JOIN generate_series(0, {T}) AS t"
            f") AS s ORDER BY g, t"
        )
    else:
        rec = (
            f"WITH RECURSIVE ds(d) AS (SELECT 0 UNION ALL SELECT d + 1 FROM ds WHERE d < {D - 1}),"
            f" ts(t) AS (SELECT 1 UNION ALL SELECT t + 1 FROM ts WHERE t < {T}) "
        )
        packages = [
            f"{rec} INSERT INTO {p}package ({pkg_cols})"
            f" SELECT d + 1, {dag}, NULL, 1, 1, 3, {base}, {base}, {dag}, NULL FROM ds",
            f"{rec} INSERT INTO {p}package ({pkg_cols}) SELECT {D} + d * {T} + t,"
            f" {dag} || '/' || {task}, d + 1, 0, 1, 3, {base}, {base}, {dag}, {task}"
            f" FROM ds CROSS JOIN ts",
        ]
        executions = (
            f"WITH RECURSIVE gs(g) AS"
            f" (SELECT 0 UNION ALL SELECT g + 1 FROM gs WHERE g < {runs - 1}),"
            f" ts(t) AS (SELECT 0 UNION ALL SELECT t + 1 FROM ts WHERE t < {T}),"
            f" s AS ({derived} FROM gs CROSS JOIN ts)"
            f" INSERT INTO {p}execution ({cols}) SELECT {select_list} FROM s ORDER BY g, t"
        )
    errors = (
        f"INSERT INTO {p}executionerror (executionid, errortype, errormessage, createdat)"
        f" SELECT executionid, 'RuntimeError', 'seeded failure of ' || externalexecutionid, endtime"
        f" FROM {p}execution WHERE executionstatus = 'F' AND taskid IS NOT NULL"
    )
    # A copy checkpoint for the tasks of every 4th package, once per lineage and package.
    checkpoints = (
        f"INSERT INTO {p}executioncheckpoint (scopekey, executionid, checkpointtype, nodekey,"
        f" iterationkey, payload, createdat)"
        f" SELECT 'L' || lineageid || '/P' || packageid || '/I-', executionid, 'NODE_OUTPUT',"
        f" '{keys.COPY_NODE}', '', '{{\"rows\": 1000}}', endtime FROM {p}execution"
        f" WHERE taskid IS NOT NULL AND packageid % 4 = 0 AND originalexecutionid = executionid"
    )
    statements = [*packages, executions, errors, checkpoints]
    if pg:
        statements += [
            f"SELECT setval(pg_get_serial_sequence('{p}{t}', '{c}'), (SELECT max({c}) FROM {p}{t}))"
            for t, c in (("package", "packageid"), ("execution", "executionid"))
        ]
    return statements


def seed(url: str, history: int) -> tuple[int, float]:
    """Seed about ``history`` executions (whole runs); returns (rows, seconds)."""
    runs = max(1, math.ceil(history / ROWS_PER_RUN))
    t0 = time.perf_counter()
    engine = create_catalog_engine(url)
    try:
        dialect = engine.dialect.name
        with engine.begin() as conn:
            for sql in _seed_sql(dialect, runs):
                # psycopg2 reads % as a parameter marker even without parameters.
                conn.exec_driver_sql(sql.replace("%", "%%") if dialect == "postgresql" else sql)
        if dialect == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in ("package", "execution", "executionerror", "executioncheckpoint"):
                    conn.exec_driver_sql(f"VACUUM (ANALYZE) bfx.{table}")
        else:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        with engine.connect() as conn:
            table = "bfx.execution" if dialect == "postgresql" else "Execution"
            rows = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()
    return rows, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# a. statements and round trips per transition
# ---------------------------------------------------------------------------------------------


@dataclass
class Count:
    transition: str
    statements: int  # SQL statements the store sent, without BEGIN/COMMIT
    begin_statements: int  # BEGIN IMMEDIATE (SQLite)
    begins: int
    commits: int
    pings: int
    wire: list[str] | None = None  # PostgreSQL: what the proxy saw, one entry a round trip

    @property
    def with_commit(self) -> int:
        return self.statements + self.commits

    @property
    def derived_round_trips(self) -> int:
        # psycopg2 sends BEGIN as its own query before the first statement of a transaction.
        return self.pings + self.begins + self.statements + self.commits


def count_transitions(store: CatalogStore, probe: Probe, wire: WireCounter | None) -> list[Count]:
    counts: list[Count] = []
    store.executions("no such dag")  # connect first: SQLAlchemy's first-connect queries

    def measure(transition: str, fn: Callable[[], Any]) -> Any:
        probe.reset()
        if wire is not None:
            wire.reset()
        result = fn()
        counts.append(
            Count(
                transition,
                probe.statements,
                probe.begin_statements,
                probe.begins,
                probe.commits,
                probe.pings,
                wire.round_trips() if wire is not None else None,
            )
        )
        return result

    def spec(batch: BatchSpec, t: int, try_number: int = 1, **kw: Any) -> TaskSpec:
        # task_01 has no upstream: the gate marks it read_first (it may start the batch, and
        # the guarded first start would miss there; decision 0121).
        kw.setdefault("read_first", t == 1)
        return TaskSpec(batch, f"task_{t:02d}", try_number=try_number, lease_owner=OWNER, **kw)

    def run_ok(batch: BatchSpec, first: int, last: int) -> None:
        for t in range(first, last + 1):
            store.end_task(store.start_task(spec(batch, t)).execution_id, TaskOutcome.SUCCESS)

    def expect(started: Any, status: ExecutionStatus, what: str) -> None:
        if started.status is not status:
            raise AssertionError(f"{what}: expected {status.value}, got {started.status.value}")

    ok, failed_try, final = TaskOutcome.SUCCESS, TaskOutcome.FAILED_TRY, TaskOutcome.FINAL_FAILURE

    # A DAG's first run ever: batch and task packages are registered on the way.
    r0 = BatchSpec("cnt_main", "run_0")
    s = measure("batch start, new DAG (packages created)", lambda: store.start_task(spec(r0, 1)))
    expect(s, ExecutionStatus.EXECUTING, "first run")
    store.end_task(s.execution_id, ok)
    run_ok(r0, 2, 5)
    store.end_batch(r0.dag_id, r0.run_id, succeeded=True)

    r1 = BatchSpec("cnt_main", "run_1")
    s1 = measure("batch start (first task of a new run)", lambda: store.start_task(spec(r1, 1)))
    expect(s1, ExecutionStatus.EXECUTING, "batch start")
    s2 = measure("task start fresh (E)", lambda: store.start_task(spec(r1, 2)))
    expect(s2, ExecutionStatus.EXECUTING, "fresh")
    measure("task end success", lambda: store.end_task(s2.execution_id, ok))
    s3 = store.start_task(spec(r1, 3))
    measure(
        "task end failed try (F/R)",
        lambda: store.end_task(s3.execution_id, failed_try, error_message="boom"),
    )
    s3b = measure("task start retry (R)", lambda: store.start_task(spec(r1, 3, 2)))
    expect(s3b, ExecutionStatus.RETRYING, "retry")
    s4 = store.start_task(spec(r1, 4))
    store.write_checkpoint(
        execution_id=s4.execution_id, scope_key=s4.scope_key, node=keys.COPY_NODE, payload={}
    )
    store.end_task(s4.execution_id, failed_try, error_message="boom after copy")
    s4b = measure("task start compute-only (D)", lambda: store.start_task(spec(r1, 4, 2)))
    expect(s4b, ExecutionStatus.COMPUTE_ONLY, "compute-only")
    for started in (s1, s3b, s4b):
        store.end_task(started.execution_id, ok)
    run_ok(r1, 5, 5)
    measure(
        "batch end success",
        lambda: store.end_batch(r1.dag_id, r1.run_id, succeeded=True),
    )

    for siblings in (5, 50):
        dag = f"cnt_fail{siblings}"
        run_ok(BatchSpec(dag, "run_0"), 1, siblings + 1)
        store.end_batch(dag, "run_0", succeeded=True)
        r = BatchSpec(dag, "run_1")
        store.start_batch(r)
        run_ok(r, 1, siblings)
        last = store.start_task(spec(r, siblings + 1))
        ended = measure(
            f"task end final failure ({siblings} siblings)",
            lambda last=last: store.end_task(last.execution_id, final, error_message="boom"),
        )
        stamped = sum(
            1
            for row in store.executions(dag, "run_1")
            if row.TaskId is not None and row.NextLoadStatus == "C"
        )
        if not ended.batch_failed or stamped != siblings:
            raise AssertionError(f"final failure stamped {stamped} of {siblings} siblings")

    r2 = BatchSpec("cnt_fail5", "run_2")
    store.start_batch(r2)  # resumes the failed lineage
    skipped = measure("task start skip (C)", lambda: store.start_task(spec(r2, 1)))
    expect(skipped, ExecutionStatus.SKIPPED, "skip")
    # A task with an upstream in a resumed run: its evidence read says it has rows in the
    # lineage, so the gate marks it read_first too (decision 0121).
    skipped = measure(
        "task start skip (C), with upstream",
        lambda: store.start_task(spec(r2, 2, read_first=True)),
    )
    expect(skipped, ExecutionStatus.SKIPPED, "skip with upstream")
    # What a wrong guess costs: the guarded INSERT matches nothing, then the start reads.
    missed = measure(
        "task start skip (C), guarded INSERT missed (information)",
        lambda: store.start_task(spec(r2, 3, read_first=False)),
    )
    expect(missed, ExecutionStatus.SKIPPED, "skip after a missed guarded start")
    order = [
        "batch start, new DAG (packages created)",
        "batch start (first task of a new run)",
        "task start fresh (E)",
        "task start skip (C)",
        "task start skip (C), with upstream",
        "task start skip (C), guarded INSERT missed (information)",
        "task start compute-only (D)",
        "task start retry (R)",
        "task end success",
        "task end failed try (F/R)",
        "task end final failure (5 siblings)",
        "task end final failure (50 siblings)",
        "batch end success",
    ]
    return sorted(counts, key=lambda c: order.index(c.transition))


# ---------------------------------------------------------------------------------------------
# b/c. latency
# ---------------------------------------------------------------------------------------------


@dataclass
class Latency:
    engine: str
    history: int
    label: str
    start_ms: list[float] = field(default_factory=list)
    end_ms: list[float] = field(default_factory=list)
    #: The starts of task_01 (no upstream: read first, the full path; also in start_ms).
    read_first_ms: list[float] = field(default_factory=list)
    # per transition kind: one dict component -> ms per call
    parts: dict[str, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    explain: dict[str, tuple[float, float]] = field(default_factory=dict)  # planning, execution
    seconds: float = 0.0
    #: PostgreSQL: the same-shape floor timed one run after each of ours (pg_floor.FloorRunner)
    floor: pg_floor.Floor | None = None


def time_in_turn(
    name: str, per_size: dict[int, Target], rows_of: dict[int, int], runs: int
) -> dict[int, Latency]:
    """Goals 1 and 3, timed: ``runs`` DAG runs on each catalog of ``per_size`` (one per history
    size), one run of each in turn, each after one untimed warm-up run, with none of the
    benchmark's listeners attached. On PostgreSQL each run of ours is followed by one run of
    the same-shape floor on the same database (goal 1's judge, decision 0113). Timed in turn,
    the history sizes (goal 3's ratio) see the same moments of the machine, whose speed moves
    by tens of percent from one minute to the next: timed one block after the other, the same
    code gave 0.81x and 1.30x for SQLite's 1,000,000 rows against 1,000 (decision 0119)."""
    sizes = sorted(per_size)
    with ExitStack() as stack:
        stores: dict[int, CatalogStore] = {}
        runners: dict[int, pg_floor.FloorRunner] = {}
        lats = {size: Latency(name, rows_of[size], "default") for size in sizes}
        for size in sizes:
            store, probe, _ = stack.enter_context(catalog(per_size[size].url()))
            probe.detach()  # timed without the probe's listeners (Probe.detach)
            stores[size] = store
            if name == "postgresql":
                runners[size] = pg_floor.FloorRunner(per_size[size].url(), TASKS)
                stack.callback(lambda s=size: setattr(lats[s], "floor", runners[s].close()))
        load0, t0 = loadavg(), time.perf_counter()
        for k in range(-1, runs):  # -1: the untimed warm-up run of each
            for size in sizes:
                runner = runners.get(size)
                run_latency(
                    stores[size],
                    None,
                    0 if k < 0 else 1,
                    f"bench{size}",
                    lats[size],
                    warmup=1 if k < 0 else 0,
                    between=None if runner is None else runner.run,
                    first=max(k, 0),
                )
        seconds, load = time.perf_counter() - t0, (load0, loadavg())
    for lat in lats.values():
        lat.seconds, lat.load = seconds, load
    return lats


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def explain_facts(engine: Engine, probe: Probe) -> dict[str, tuple[float, float]]:
    """PostgreSQL: planning and execution time (ms) of the last task-start and task-end facts
    SELECTs the store sent, by EXPLAIN ANALYZE in a transaction that is rolled back."""
    out: dict[str, tuple[float, float]] = {}
    for key, name in (
        ("SELECT task-start facts (locks the batch row)", "task start facts SELECT"),
        ("SELECT task-end facts (locks the batch row)", "task end facts SELECT"),
    ):
        # With decision 0101's folding the label reads "BEGIN + SELECT ...", the text
        # "BEGIN;\n<SELECT with its values bound>".
        found = [
            k
            for k in probe.last_sql
            if k.removesuffix(" (prepared)") == key
            or k.endswith(" + " + key)
            or k.endswith(" + " + key + " (prepared)")
        ]
        if not found:
            continue
        sql, params = probe.last_sql[found[0]]
        # Decision 0105: "BEGIN;\nSET LOCAL plan_cache_mode ...;\nEXECUTE name(...)", run
        # again by name on the store's own (pooled) session, generic plan and all.
        *ahead, sql = [p.strip() for p in sql.split(";\n") if p.strip()]
        generic = [p for p in ahead if p.upper().startswith("SET LOCAL")]
        if sql.upper().startswith("EXECUTE"):
            name += " (prepared, generic plan)"
        runs = []
        with engine.connect() as conn:
            for _ in range(5):
                trans = conn.begin()
                for setting in generic:
                    conn.exec_driver_sql(setting)
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE) " + sql, params).scalars().all()
                trans.rollback()
                found = {}
                for line in plan:
                    for label in ("Planning Time", "Execution Time"):
                        if line.strip().startswith(label):
                            found[label] = float(line.split(":")[1].split()[0])
                runs.append((found.get("Planning Time", 0.0), found.get("Execution Time", 0.0)))
        out[name] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )
    return out


def build_time(store: CatalogStore) -> float | None:
    """Mean ms to construct (not compile, not run) the task-start facts query, if the store
    has the method this benchmark knows; a diagnostic of Python cost only."""
    build = getattr(store, "_task_facts_query", None)
    if build is None:
        return None
    spec = TaskSpec(BatchSpec("dag_0000", "probe"), "task_01")
    now = time.time
    from airflow_provider_bfx.catalog.store import utcnow

    build(spec, utcnow())
    t0 = now()
    n = 200
    for _ in range(n):
        build(spec, utcnow())
    return (now() - t0) / n * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def parts_runs(runs: int) -> int:
    """DAG runs of the pass that cuts calls into their parts (a quarter of the timed ones)."""
    return max(5, runs // 4)


def run_latency(
    store: CatalogStore,
    probe: Probe | None,
    runs: int,
    tag: str,
    result: Latency,
    warmup: int = 1,
    between: Callable[[int], None] | None = None,
    first: int = 0,
) -> None:
    """``runs`` DAG runs of ``TASKS`` tasks through ``store``, each start and end timed;
    ``between(i)`` after each run ``i`` (untimed here: the interleaved floor). With ``probe``
    (attached) each call is cut into its parts instead, and its time is not kept: the probe's
    listeners add their own (:meth:`Probe.detach`). ``first``: the number of the first run
    (runs timed a few at a time go on numbering where the last call stopped)."""

    def record(kind: str, t0: float, t1: float) -> None:
        assert probe is not None
        result.parts[kind].append(timeline(probe, t0, t1))

    def reset() -> None:
        if probe is not None:
            probe.reset()

    for i in range(first - warmup, first + runs):
        dag = f"dag_{i % BENCH_DAGS:04d}"
        run_id = f"{tag}__{i + 1:05d}"
        batch = BatchSpec(dag, run_id)
        store.start_batch(batch)
        for t in range(1, TASKS + 1):
            # task_01 has no upstream: the gate marks it read_first (decision 0121).
            task_spec = TaskSpec(batch, f"task_{t:02d}", lease_owner=OWNER, read_first=t == 1)
            reset()
            t0 = time.perf_counter()
            started = store.start_task(task_spec)
            t1 = time.perf_counter()
            if i >= 0:
                if probe is None:
                    result.start_ms.append((t1 - t0) * 1000)
                    if task_spec.read_first:
                        result.read_first_ms.append((t1 - t0) * 1000)
                else:
                    record("task start", t0, t1)
            if started.status is not ExecutionStatus.EXECUTING:
                raise AssertionError(f"{dag} {run_id} task_{t:02d}: {started.status.value}")
            reset()
            t0 = time.perf_counter()
            store.end_task(started.execution_id, TaskOutcome.SUCCESS)
            t1 = time.perf_counter()
            if i >= 0:
                if probe is None:
                    result.end_ms.append((t1 - t0) * 1000)
                else:
                    record("task end", t0, t1)
        store.end_batch(dag, run_id, succeeded=True)
        if between is not None:
            between(i)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def table(
        self, header: list[str], rows: list[list[str]], align: str = "", indent: int = 0
    ) -> None:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
        align = align or "l" + "r" * (len(header) - 1)

        def fmt(row: list[str]) -> str:
            cells = [
                str(v).ljust(w) if a == "l" else str(v).rjust(w)
                for v, w, a in zip(row, widths, align, strict=True)
            ]
            return " " * indent + "  ".join(cells).rstrip()

        self(fmt(header))
        self(" " * indent + "  ".join("-" * w for w in widths))
        for row in rows:
            self(fmt(row))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report_counts(rep: Report, counts: dict[str, list[Count]]) -> list[str]:
    misses: list[str] = []
    sq = {c.transition: c for c in counts.get("sqlite", [])}
    pg = {c.transition: c for c in counts.get("postgresql", [])}
    names = [c.transition for c in (counts.get("sqlite") or counts.get("postgresql") or [])]
    header = [
        "transition",
        "SQLite stmts",
        "+BEGIN IMM.",
        "PG stmts",
        "PG RT (events)",
        "PG RT (wire)",
        "goal RT",
    ]
    rows = []
    for name in names:
        goal_rt = next(
            (g for prefix, g in GOAL_ROUND_TRIPS_BY_PREFIX.items() if name.startswith(prefix)),
            GOAL_ROUND_TRIPS,
        )
        s, p = sq.get(name), pg.get(name)
        row = [name]
        row += [str(s.with_commit), str(s.with_commit + s.begin_statements)] if s else ["-", "-"]
        if p:
            wire = len(p.wire) if p.wire is not None else None
            measured = wire if wire is not None else p.derived_round_trips
            ok = measured <= goal_rt
            info = name.endswith("(information)")  # a wrong guess's cost, shown, not judged
            if not ok and not info:
                misses.append(f"{name}: {measured} round trips on PostgreSQL (goal <= {goal_rt})")
            row += [
                str(p.with_commit),
                str(p.derived_round_trips),
                "-" if wire is None else str(wire),
                "(not judged)" if info else f"<= {goal_rt} {verdict(ok)}",
            ]
        else:
            row += ["-", "-", "-", "n/a"]
        rows.append(row)
    rep.table(header, rows)
    rep()
    rep("  stmts          = SQL statements the store sent, incl. COMMIT (before_cursor_execute")
    rep("                   events + commit events); BEGIN not included.")
    rep("  +BEGIN IMM.    = the same plus SQLite's BEGIN IMMEDIATE (sent by the catalog engine's")
    rep("                   'begin' hook): every call into the SQLite library. No network: the")
    rep("                   round-trip goal does not apply to SQLite.")
    rep("  PG RT (events) = pool pre-pings (wrapped dialect.do_ping) + 'begin' events (psycopg2")
    rep("                   sends BEGIN as its own query before the first statement) + statements")
    rep("                   + COMMIT. With the folding engine (decision 0101) BEGIN and the")
    rep("                   queued writes travel inside other queries: judge on the wire.")
    rep("  PG RT (wire)   = measured independently by a TCP proxy between psycopg2 and the server")
    rep("                   that parses the client's protocol messages: each Query ('Q') or Sync")
    rep("                   ('S') waits for ReadyForQuery, so one message = one round trip.")
    within = [n for n, c in pg.items() if c.with_commit <= GOAL_ROUND_TRIPS < len(c.wire or [])]
    if within:
        c = pg[within[0]]
        misses.append(
            f"note: {', '.join(within)}: the store sends {c.with_commit} statements incl. COMMIT"
            f" (its own budget, decision 0004); the wire adds {c.pings} pool pre-ping"
            f" (SELECT 1) and {c.begins} BEGIN from psycopg2"
        )
    if pg:
        rep()
        rep("  What the wire showed, in order (PostgreSQL):")
        width = max(len(n) for n in names)
        for name in names:
            p = pg.get(name)
            if p and p.wire is not None:
                rep(f"    {name.ljust(width)}  {' | '.join(p.wire)}")
    return misses


def summarize_parts(calls: list[dict[str, float]]) -> list[tuple[str, float, float]]:
    """(component, p50 ms, mean ms) over calls, in timeline order."""
    names: list[str] = []
    for call in calls:
        for name in call:
            if name not in names:
                names.append(name)
    out = []
    for name in names:
        values = [call.get(name, 0.0) for call in calls]
        out.append((name, statistics.median(values), statistics.fmean(values)))
    return out


def _total(call: dict[str, float]) -> float:
    return sum(v for k, v in call.items() if not k.startswith(" "))


def report_latency(rep: Report, results: list[Latency]) -> list[str]:
    """The p50/p99 table. PostgreSQL is judged against the floor interleaved with it (2x), when
    it was measured; SQLite against its absolute goal."""
    misses: list[str] = []
    rows = []
    for r in results:
        s50, s99 = percentile(r.start_ms, 50), percentile(r.start_ms, 99)
        e50, e99 = percentile(r.end_ms, 50), percentile(r.end_ms, 99)
        goal = "-"
        floor = r.floor
        if r.label == "default" and r.engine == "postgresql" and floor is not None:
            ok = all(
                ours <= GOAL_PG_FLOOR_RATIO * percentile(floor.ms[FLOOR_OF[kind]], 50)
                for kind, ours in (("task start", s50), ("task end", e50))
            )
            goal = f"<= {GOAL_PG_FLOOR_RATIO:g}x floor {verdict(ok)}"  # misses: report_floor
        elif r.label == "default":
            limit = GOAL_PG_P50_MS if r.engine == "postgresql" else GOAL_SQLITE_P50_MS
            ok = s50 <= limit and e50 <= limit
            goal = f"<= {limit:g} ms {verdict(ok)}"
            if not ok:
                misses.append(
                    f"{r.engine} p50 with {r.history:,} rows: start {s50:.2f} ms, end {e50:.2f} ms"
                    f" (goal <= {limit:g} ms)"
                )
        rows.append(
            [
                r.engine + ("" if r.label == "default" else f" ({r.label})"),
                f"{r.history:,}",
                str(len(r.start_ms)),
                f"{s50:.2f}",
                f"{s99:.2f}",
                f"{e50:.2f}",
                f"{e99:.2f}",
                f"{r.load[0]:.1f} -> {r.load[1]:.1f}",
                goal,
            ]
        )
    rep.table(
        [
            "engine",
            "history rows",
            "n",
            "start p50",
            "start p99",
            "end p50",
            "end p99",
            "load avg",
            "goal p50",
        ],
        rows,
    )
    rep()
    rep("  ms per call, time.perf_counter() around store.start_task / store.end_task(SUCCESS);")
    rep("  one warm-up run untimed; tasks run one after another on one connection pool;")
    rep("  no listener of the benchmark attached while timed (the breakdown below is a")
    rep("  separate pass with them).")
    rep("  load avg = the machine's 1-minute load average before -> after the timed phase")
    rep(f"  ({os.cpu_count()} logical CPUs): above that, other processes competed for the CPU.")
    return misses


def report_floor(rep: Report, results: list[Latency]) -> list[str]:
    """The floor interleaved with each PostgreSQL timing (pg_floor.FloorRunner) and our p50s
    side by side: goal 1 on PostgreSQL is <= 2x the floor; the issue's absolute "~1 ms" is
    judged on a second line, not hidden."""
    misses: list[str] = []
    timed = [r for r in results if r.engine == "postgresql" and r.floor is not None]
    rows = []
    for r in timed:
        assert r.floor is not None
        for key, shape in pg_floor.SHAPES.items():
            ms = r.floor.ms[key]
            rows.append(
                [
                    f"{r.history:,}",
                    key,
                    shape,
                    str(len(ms)),
                    f"{percentile(ms, 50):.2f}",
                    f"{percentile(ms, 99):.2f}",
                ]
            )
    rep.table(
        ["history rows", "floor", "what is sent (| = a round trip)", "n", "p50", "p99"],
        rows,
        "lllrrr",
    )
    rep(
        "  raw psycopg2 (autocommit, no SQLAlchemy), same server and database, same loop; one"
        " run of the floor after each run of ours (interleaved: both see the same moments)"
    )
    rep()
    rows = []
    for r in timed:
        assert r.floor is not None
        for kind, attr in (("task start", "start_ms"), ("task end", "end_ms")):
            ours = percentile(getattr(r, attr), 50)
            base = percentile(r.floor.ms[FLOOR_OF[kind]], 50)
            ratio = ours / base
            rel_ok = ratio <= GOAL_PG_FLOOR_RATIO
            abs_ok = ours <= GOAL_PG_P50_MS
            where = f"postgresql p50 with {r.history:,} rows: {kind} {ours:.2f} ms"
            if not rel_ok:
                misses.append(
                    f"{where} = {ratio:.2f}x the same-run floor {base:.2f} ms"
                    f" (goal <= {GOAL_PG_FLOOR_RATIO:g}x)"
                )
            if not abs_ok:
                misses.append(f"{where} (the issue's absolute figure: <= {GOAL_PG_P50_MS:g} ms)")
            rows.append(
                [
                    f"{r.history:,}",
                    kind,
                    f"{ours:.2f}",
                    f"{base:.2f} ({FLOOR_OF[kind]})",
                    f"{ratio:.2f}x",
                    verdict(rel_ok),
                    f"{ours:.2f} {verdict(abs_ok)}",
                ]
            )
        if r.read_first_ms:
            # task_01's starts (no upstream: read first, the full path), one start in twenty;
            # shown beside the others, the goal is judged on the p50 of all starts above.
            ours = percentile(r.read_first_ms, 50)
            base = percentile(r.floor.ms[FLOOR_OF["task start"]], 50)
            rows.append(
                [
                    f"{r.history:,}",
                    "task start, read first (task_01)",
                    f"{ours:.2f}",
                    f"{base:.2f} ({FLOOR_OF['task start']})",
                    f"{ours / base:.2f}x",
                    "(not judged)",
                    "(not judged)",
                ]
            )
    rep.table(
        [
            "history rows",
            "transition",
            "ours p50",
            "floor p50",
            "ours/floor",
            f"goal <= {GOAL_PG_FLOOR_RATIO:g}x",
            f"absolute <= {GOAL_PG_P50_MS:g} ms",
        ],
        rows,
        "llrrrll",
    )
    rep(
        "  task start: every start of a run (task_01's included); a first start in its lineage"
        " is one guarded INSERT (decision 0121). task_01 has no upstream, so it reads first: its"
        " own p50 is the line 'read first'"
    )
    return misses


def report_ratio(rep: Report, results: list[Latency]) -> list[str]:
    misses: list[str] = []
    by_engine: dict[str, list[Latency]] = defaultdict(list)
    for r in results:
        if r.label == "default":
            by_engine[r.engine].append(r)
    rows = []
    for engine, rs in by_engine.items():
        if len(rs) < 2:
            continue
        small, large = min(rs, key=lambda r: r.history), max(rs, key=lambda r: r.history)
        for kind, attr in (("task start", "start_ms"), ("task end", "end_ms")):
            a = percentile(getattr(small, attr), 50)
            b = percentile(getattr(large, attr), 50)
            ratio = b / a
            ok = ratio <= GOAL_RATIO
            if not ok:
                misses.append(
                    f"{engine} {kind}: p50 {b:.2f} ms with {large.history:,} rows vs {a:.2f} ms"
                    f" with {small.history:,} (x{ratio:.2f})"
                )
            rows.append(
                [
                    engine,
                    kind,
                    f"{a:.2f}",
                    f"{b:.2f}",
                    f"{ratio:.2f}",
                    verdict(ok),
                    f"{small.load[0]:.2f}->{small.load[1]:.2f}",
                    f"{large.load[0]:.2f}->{large.load[1]:.2f}",
                ]
            )
    if rows:
        large_n = max(r.history for r in results)
        small_n = min(r.history for r in results)
        rep.table(
            [
                "engine",
                "transition",
                f"p50 ms {small_n:,} rows (baseline)",
                f"p50 ms {large_n:,} rows",
                f"p50({large_n:,})/p50({small_n:,})",
                f"goal <= {GOAL_RATIO:g}x",
                "load avg (small)",
                "load avg (large)",
            ],
            rows,
            align="llrrrrll",
        )
    return misses


def report_breakdown(rep: Report, results: list[Latency]) -> None:
    for r in results:
        for kind in ("task start", "task end"):
            calls = r.parts.get(kind) or []
            if not calls:
                continue
            total = statistics.fmean(_total(c) for c in calls)
            extra = "" if r.label == "default" else f", {r.label}"
            rep(f"  {r.engine}, {r.history:,} rows{extra}: {kind} (mean {total:.3f} ms)")
            rows = [
                [name, f"{p50:.3f}", f"{mean:.3f}", f"{100 * mean / total:.0f}%"]
                for name, p50, mean in summarize_parts(calls)
            ]
            rep.table(["component", "p50 ms", "mean ms", "share"], rows, align="lrrr", indent=4)
            rep()


def dominant(results: list[Latency], engine: str, kind: str) -> tuple[str, str]:
    """(largest component, largest SQL statement) of the large-history run, with their means."""
    rs = [r for r in results if r.engine == engine and r.label == "default"]
    if not rs:
        return "", ""
    large = max(rs, key=lambda r: r.history)
    calls = large.parts.get(kind) or []
    if not calls:
        return "", ""
    total = statistics.fmean(_total(c) for c in calls)
    parts = [p for p in summarize_parts(calls) if not p[0].startswith(" ")]

    def say(part: tuple[str, float, float]) -> str:
        return f"{part[0]}: {part[2]:.3f} ms of {total:.3f} ms mean ({100 * part[2] / total:.0f}%)"

    top = max(parts, key=lambda p: p[2])
    sql = [p for p in parts if p[0].startswith("#")]
    return say(top), (say(max(sql, key=lambda p: p[2])) if sql else "")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@contextmanager
def catalog(url: str) -> Iterator[tuple[CatalogStore, Probe, Engine]]:
    engine = create_catalog_engine(url)
    probe = Probe(engine)
    try:
        yield CatalogStore(engine, check_schema=False), probe, engine
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument(
        "--history",
        type=int,
        default=None,
        help="executions in the large catalog (default 1,000,000; 100,000 with --quick)",
    )
    parser.add_argument(
        "--transitions",
        type=int,
        default=None,
        help="timed task starts (and as many task ends) per catalog (default 2,000; 400 quick)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller history, fewer transitions")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BFX_BENCH_PG_URL")
        or os.environ.get("BFX_TEST_PG_URL")
        or DEFAULT_PG_ADMIN_URL,
        help="a PostgreSQL URL whose role may CREATE DATABASE (env BFX_BENCH_PG_URL)",
    )
    parser.add_argument("--pg-database", default="bfx_bench", help="created and dropped")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ("sqlite", "postgresql"):
            parser.error(f"unknown engine {e!r}")
    large = args.history if args.history is not None else (100_000 if args.quick else 1_000_000)
    transitions = args.transitions or (400 if args.quick else 2_000)
    runs = max(1, math.ceil(transitions / TASKS))
    sizes = sorted({SMALL_HISTORY, large})

    targets: list[Target] = []
    counts: dict[str, list[Count]] = {}
    results: list[Latency] = []
    seeded: list[list[str]] = []
    build_ms: dict[str, float] = {}
    pg_facts_engine: Engine | None = None
    try:
        for name in engines:
            # One catalog per history size, all kept until the end: the sizes are timed in
            # turn, one run of each after the other, so that the history growth (goal 3)
            # compares the same moments of the machine (decision 0119), as the floor does.
            per_size: dict[int, Target] = {}
            rows_of: dict[int, int] = {}
            for size in sizes:
                target: Target = (
                    SqliteTarget()
                    if name == "sqlite"
                    else PostgresTarget(
                        args.pg_admin_url,
                        args.pg_database if size == sizes[0] else f"{args.pg_database}_{size}",
                        args.keep,
                    )
                )
                targets.append(target)
                per_size[size] = target
                log(f"{name}: creating a catalog and seeding {size:,} executions")
                target.fresh(f"{size}")
                rows, seconds = seed(target.url(), size)
                rows_of[size] = rows
                seeded.append([name, f"{size:,}", f"{rows:,}", f"{seconds:.1f}"])
                log(f"{name}: {rows:,} rows seeded in {seconds:.1f} s")
                if size == sizes[0]:
                    log(f"{name}: counting statements and round trips")
                    proxy = isinstance(target, PostgresTarget)
                    with catalog(target.url(via_proxy=proxy)) as (store, probe, _):
                        wire = target.proxy if isinstance(target, PostgresTarget) else None
                        counts[name] = count_transitions(store, probe, wire)
            log(
                f"{name}: timing {runs * TASKS:,} task starts and ends per catalog"
                f" ({', '.join(f'{rows_of[s]:,}' for s in sizes)} rows), the catalogs in turn"
            )
            timed = time_in_turn(name, per_size, rows_of, runs)
            for size in sizes:
                lat = timed[size]
                with catalog(per_size[size].url()) as (store, probe, engine):
                    # Where the time goes: a shorter pass with the probe, untimed.
                    run_latency(store, probe, parts_runs(runs), f"parts{size}", lat)
                    if name == "postgresql":
                        lat.explain = explain_facts(engine, probe)
                    if size == sizes[0]:
                        built = build_time(store)
                        if built is not None:
                            build_ms[name] = built
                results.append(lat)
            target = per_size[sizes[0]]
            rows = rows_of[sizes[0]]
            if name == "postgresql":
                # Goal 1's baseline in the same run: psycopg2's own BEGIN and COMMIT and
                # every statement sent alone (main's four round trips; an explicit
                # isolation_level turns decision 0101's folding off).
                log(f"{name}: timing again without folding (baseline, decision 0101 off)")
                engine = create_catalog_engine(target.url(), isolation_level="READ COMMITTED")
                probe = Probe(engine)
                lat = Latency(name, rows, "no folding: 4 round trips, baseline")
                load0 = loadavg()
                probe.detach()
                run_latency(CatalogStore(engine, check_schema=False), None, runs, "nofold", lat)
                probe.attach()
                nofold = CatalogStore(engine, check_schema=False)
                run_latency(nofold, probe, parts_runs(runs), "nofoldparts", lat)
                lat.load = (load0, loadavg())
                engine.dispose()
                results.append(lat)
            if isinstance(target, PostgresTarget):
                pg_facts_engine = create_catalog_engine(target.url())

        rep = Report()
        rep("bfx catalog benchmark")
        rep("=====================")
        rep()
        rep("Machine")
        rep("-------")
        rep.table(["what", "value"], [list(f) for f in machine_facts(pg_facts_engine)], "ll")
        if pg_facts_engine is not None:
            pg_facts_engine.dispose()
        rep()
        rep(
            f"Run: engines={','.join(engines)} history={large:,} transitions={runs * TASKS:,}"
            f" quick={args.quick}"
        )
        rep()
        rep("Seeded catalogs (INSERT ... SELECT in one transaction, then ANALYZE)")
        rep("---------------")
        rep.table(["engine", "asked", "Execution rows", "seconds"], seeded, "lrrr")
        rep()
        rep("a. Statements and round trips per transition (one call each)")
        rep("------------------------------------------------------------")
        misses = report_counts(rep, counts)
        rep()
        rep("b/c. Latency (ms) of task start and task end (success)")
        rep("------------------------------------------------------")
        misses += report_latency(rep, results)
        rep()
        if any(r.floor is not None for r in results):
            rep("b2. PostgreSQL against the same-run floor (issue 12, goal 1)")
            rep("------------------------------------------------------------")
            misses += report_floor(rep, results)
            rep()
        rep("c. History growth: p50 with the large history / p50 with the small one")
        rep("--------------------------------------------------------------------")
        misses += report_ratio(rep, results)
        rep("  both catalogs timed in turn, one run of 20 tasks of each after the other")
        rep()
        rep("Where the time goes (per call, cut with the cursor events in a separate pass of a")
        rep("quarter of the runs, whose listeners add their own time; on PostgreSQL the #1")
        rep("statement carries BEGIN, and COMMIT the queued writes: the second round trip;")
        rep("the #2 INSERT/UPDATE there is only recorded, decision 0101)")
        rep("-------------------------------------------------------------------------------")
        report_breakdown(rep, results)
        rep("Diagnostics")
        rep("-----------")
        for name, ms in build_ms.items():
            rep(
                f"  {name}: constructing the task-start facts query (SQLAlchemy Core objects,"
                f" before compile-cache lookup) takes {ms:.3f} ms per call"
            )
        explains = [
            [r.engine, f"{r.history:,}", what, f"{plan:.3f}", f"{exe:.3f}"]
            for r in results
            if r.label == "default"
            for what, (plan, exe) in r.explain.items()
        ]
        if explains:
            rep("  PostgreSQL EXPLAIN ANALYZE of the facts SELECTs (median of 5; rolled back):")
            rep.table(
                ["engine", "history rows", "statement", "planning ms", "execution ms"],
                explains,
                align="lrlrr",
                indent=4,
            )
        rep()
        rep("Goals")
        rep("-----")
        if not misses:
            rep("  every goal met")
        for miss in misses:
            kind = "NOTE" if miss.startswith("note: ") else "MISS"
            rep(f"  {kind}  {miss.removeprefix('note: ')}")
        for engine in engines:
            for kind in ("task start", "task end"):
                top, sql = dominant(results, engine, kind)
                if top:
                    rep(f"  {engine} {kind}, largest component: {top}")
                    rep(f"  {engine} {kind}, largest statement: {sql}")
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
