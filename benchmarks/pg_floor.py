"""The same-run floor of issue 12, goal 1: what the server and the driver cost for a
transaction of a task start's and a task end's shape, with no SQLAlchemy and no catalog.

Goal 1 says "task start and task end p50 <= 2x the same-shape floor on loopback PostgreSQL";
the issue measured that floor with pgbench in the same run as the catalog benchmark. A figure
taken on another day (or with another load average) cannot judge ours, so ``bench_catalog.py``
measures it itself, on the same server and database, one run of the floor after each run of
the store (:class:`FloorRunner`: interleaved, so both see the same state of the machine):

* **task start floor**: ``BEGIN`` | ``SELECT ... FOR UPDATE`` of a parent row | ``INSERT`` of a
  child row | ``COMMIT``, each statement its own round trip (what pgbench does with a custom
  script: four round trips);
* **task end floor**: a one-row insert transaction, ``BEGIN`` | ``INSERT`` | ``COMMIT`` (the
  issue's floor); ``BEGIN`` | ``UPDATE`` | ``COMMIT`` of the row the start inserted is timed too
  and printed beside it.

Each is also timed in the two-round-trip shape the catalog sends (decision 0101:
``BEGIN; SELECT ... FOR UPDATE`` | ``INSERT ...; COMMIT``), for information only: that is the
least the server can do for our shape, the lower bound the store's Python sits on.

Raw psycopg2 in autocommit (so nothing is sent that is not written here), parameters bound by
psycopg2, one connection, the same loop as the store's timing (``runs`` x ``tasks`` starts,
each followed by its end; one warm-up run untimed). The tables live in a schema of their own
(``bfx_floor``), dropped at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import make_url

_SETUP = """
DROP SCHEMA IF EXISTS bfx_floor CASCADE;
CREATE SCHEMA bfx_floor;
CREATE TABLE bfx_floor.parent (id integer PRIMARY KEY, status varchar(1) NOT NULL);
CREATE TABLE bfx_floor.child (
    id bigserial PRIMARY KEY,
    parent_id integer NOT NULL REFERENCES bfx_floor.parent (id),
    task_id varchar(250) NOT NULL,
    status varchar(1) NOT NULL,
    start_time timestamp NOT NULL,
    end_time timestamp
);
CREATE TABLE bfx_floor.one (id bigserial PRIMARY KEY, payload varchar(250), at timestamp);
"""
_LOCK = "SELECT status FROM bfx_floor.parent WHERE id = %(parent)s FOR UPDATE"
_INSERT = (
    "INSERT INTO bfx_floor.child (parent_id, task_id, status, start_time)"
    " VALUES (%(parent)s, %(task)s, 'E', now()) RETURNING id"
)
_UPDATE = "UPDATE bfx_floor.child SET status = 'S', end_time = now() WHERE id = %(id)s"
_ONE_ROW = "INSERT INTO bfx_floor.one (payload, at) VALUES (%(task)s, now())"


@dataclass
class Floor:
    """ms per call of each floor shape, and the 1-minute load average before -> after."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)


# Shapes, in the order they are printed: (key, description).
START_4RT = "start, 4 round trips"
START_2RT = "start, 2 round trips"
END_INSERT = "end, one-row insert"
END_UPDATE = "end, update"
END_2RT = "end, 2 round trips"
SHAPES = {
    START_4RT: "BEGIN | SELECT ... FOR UPDATE | INSERT | COMMIT (pgbench's shape)",
    START_2RT: "BEGIN; SELECT ... FOR UPDATE | INSERT; COMMIT (the catalog's shape)",
    END_INSERT: "BEGIN | INSERT | COMMIT (one-row insert transaction, the issue's)",
    END_UPDATE: "BEGIN | UPDATE | COMMIT (the row the start inserted)",
    END_2RT: "BEGIN; SELECT ... FOR UPDATE | UPDATE; COMMIT (the catalog's shape)",
}


def _connect(url: str) -> Any:
    import psycopg2  # type: ignore[import-untyped]

    args = make_url(url).translate_connect_args(username="user", database="dbname")
    conn = psycopg2.connect(**args, sslmode="disable")
    conn.autocommit = True  # nothing is sent that this module does not write
    return conn


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class FloorRunner:
    """The floor timed one run at a time, so that ``bench_catalog.py`` can interleave it with
    the store's own runs: on a shared machine (a VM whose speed moves by tens of percent from
    one minute to the next) ours and the floor then see the same moments, and their ratio,
    which judges goal 1, does not depend on when each was measured."""

    def __init__(self, url: str, tasks: int) -> None:
        self.tasks = tasks
        self.conn = _connect(url)
        self.cur = self.conn.cursor()
        self.cur.execute(_SETUP)
        self.floor = Floor(ms={key: [] for key in SHAPES})
        self._load0 = _load()
        self._parents = 0

    def run(self, i: int) -> None:
        """One run of ``tasks`` starts, each followed by its end; timed when ``i >= 0``."""
        cur, clock = self.cur, time.perf_counter
        self._parents += 1
        parent = self._parents
        cur.execute("INSERT INTO bfx_floor.parent (id, status) VALUES (%(p)s, 'E')", {"p": parent})
        for t in range(self.tasks):
            p = {"parent": parent, "task": f"task_{t:02d}"}
            times: dict[str, float] = {}

            t0 = clock()
            cur.execute("BEGIN")
            cur.execute(_LOCK, p)
            cur.fetchall()
            cur.execute(_INSERT, p)
            row_id = cur.fetchone()[0]
            cur.execute("COMMIT")
            times[START_4RT] = clock() - t0

            t0 = clock()
            cur.execute("BEGIN")
            cur.execute(_ONE_ROW, p)
            cur.execute("COMMIT")
            times[END_INSERT] = clock() - t0

            t0 = clock()
            cur.execute("BEGIN")
            cur.execute(_UPDATE, {"id": row_id})
            cur.execute("COMMIT")
            times[END_UPDATE] = clock() - t0

            t0 = clock()
            cur.execute("BEGIN;\n" + _LOCK, p)
            cur.fetchall()
            cur.execute(_INSERT.removesuffix(" RETURNING id") + ";\nCOMMIT", p)
            times[START_2RT] = clock() - t0

            t0 = clock()
            cur.execute("BEGIN;\n" + _LOCK, p)
            cur.fetchall()
            cur.execute(_UPDATE + ";\nCOMMIT", {"id": row_id})
            times[END_2RT] = clock() - t0

            if i >= 0:
                for key, seconds in times.items():
                    self.floor.ms[key].append(seconds * 1000)

    def close(self) -> Floor:
        """Drop the floor's schema; the timings."""
        self.floor.load = (self._load0, _load())
        try:
            self.cur.execute("DROP SCHEMA bfx_floor CASCADE")
        finally:
            self.conn.close()
        return self.floor


def measure(url: str, runs: int, tasks: int, warmup: int = 1) -> Floor:
    """Time every floor shape ``runs * tasks`` times on the database of ``url`` (a
    ``postgresql+psycopg2`` URL), in the store's loop: each task's start, then its end."""
    runner = FloorRunner(url, tasks)
    try:
        for i in range(-warmup, runs):
            runner.run(i)
    except BaseException:
        runner.conn.close()
        raise
    return runner.close()
