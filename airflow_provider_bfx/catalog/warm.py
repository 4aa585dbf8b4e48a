"""Build the catalog's statements in a process before it forks task processes. No Airflow here.

A task process's first transitions used to build the catalog's schema objects and its
statements (the facts queries select ~170 columns through aliases of the wide Execution table):
tens of milliseconds of Python in every task process, more than all of its catalog statements
together (issue 12, decision 0110). They depend only on the dialect's name (``Catalog.memo``),
so a process that forks task processes (the scheduler with LocalExecutor, a Celery worker)
builds them once for the dialects it may meet, and every forked task inherits them.

Nothing here connects to a database: the engines are created for their dialect only and
disposed unused. The hot path's statements are also compiled here, for that never-connected
dialect: a task's engine of the same kind of dialect uses them as they are (:mod:`.compiled`,
decision 0118), so a task process no longer compiles the task-start facts query (13 ms of CPU),
its row's INSERT, the evidence read, the return value's checkpoint, the schema check or the
task end's statements; nor a batch start's (a run's first task) or the upstream read of up to
8 upstream tasks (decision 0119). What else a task compiles (a batch end, a wider fan-in,
rarer paths) is compiled there, once.
"""

from __future__ import annotations

from sqlalchemy import create_engine

from airflow_provider_bfx.catalog import (
    adoption,
    batches,
    checkpoints,
    facts,
    guarded_start,
    tasks,
    upstreams,
)
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.revision import revision_query
from airflow_provider_bfx.catalog.txn import Catalog

#: The dialects warmed, by a URL that names only the driver (never connected).
DIALECT_URLS = {"postgresql": "postgresql+psycopg2://", "sqlite": "sqlite://"}

#: ``CatalogStore.runs_awaiting_evidence``'s default (the query is built for ``limit + 1``).
EVIDENCE_LIMIT = 5

#: The upstream reads compiled before a fork, by their number of task-id parameters: a task
#: with up to 8 upstream tasks (a wider fan-in compiles its own once, in its process).
UPSTREAM_SLOTS = (1, 2, 4, 8)


def build_statements(cat: Catalog) -> None:
    """Build every statement of a task's start and end that ``cat.memo`` keeps, and compile
    those a task sends through :mod:`.compiled` on every start and end."""
    guarded_start.start_guarded(cat)  # a task's first start in its lineage (decision 0121)
    facts.task_facts(cat)
    facts.task_end_facts(cat)
    tasks.start_row_insert(cat)
    tasks.end_update(cat)
    for outcome in TaskOutcome:  # a success's and a skip's guarded end (decision 0120)
        tasks.end_guarded(cat, outcome)
    tasks.insert_error(cat)
    adoption.batches(cat, EVIDENCE_LIMIT + 1)
    checkpoints.overwrite(cat)
    checkpoints.first_write(cat)
    revision_query(cat.engine.dialect)
    # A run's first task starts its batch (decision 0119): the lock, the read, and the row's
    # INSERT, which is the task start's (every column named).
    batches.package_lock(cat)
    facts.batch_start_facts(cat, with_next_id=True)
    facts.batch_start_facts(cat, with_next_id=False)
    for slots in UPSTREAM_SLOTS:
        upstreams.latest_task_rows(cat, slots)
    upstreams.latest_item_rows(cat)
    facts.task_facts_query(cat)
    facts.task_end_facts_query(cat)
    facts.batch_start_facts_query(cat, with_next_id=True)
    facts.batch_start_facts_query(cat, with_next_id=False)
    adoption.batches_query(cat, EVIDENCE_LIMIT + 1)


def warm(dialects: tuple[str, ...] = tuple(DIALECT_URLS)) -> list[str]:
    """Build the statements of ``dialects`` in this process; the names of those built (a
    dialect whose driver is not installed is left to the task)."""
    done = []
    for name in dialects:
        try:
            engine = create_engine(DIALECT_URLS[name])
        except ImportError:
            continue
        try:
            build_statements(Catalog(engine, check_schema=False))
        finally:
            engine.dispose()
        done.append(name)
    return done
