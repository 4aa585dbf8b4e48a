"""Decision 0110: the catalog's statements are built once per dialect in a process, and a
process that forks task processes builds them before it forks (``catalog/warm.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine

from airflow_provider_bfx.catalog import facts
from airflow_provider_bfx.catalog.txn import Catalog
from airflow_provider_bfx.catalog.warm import warm


def test_statements_are_shared_by_the_catalogs_of_a_dialect(tmp_path: Path) -> None:
    one = create_engine(f"sqlite:///{tmp_path / 'one.db'}")
    two = create_engine(f"sqlite:///{tmp_path / 'two.db'}")
    pg = create_engine("postgresql+psycopg2://")  # never connected
    try:
        a, b, c = (Catalog(e, check_schema=False) for e in (one, two, pg))
        assert a.s is b.s and a.s is not c.s
        assert facts.task_facts_query(a) is facts.task_facts_query(b)
        assert facts.task_facts_query(a) is not facts.task_facts_query(c)
        # What is compiled is compiled once per kind of dialect (decision 0118); each catalog
        # holds it bound to its own engine's dialect object.
        assert facts.task_facts(a) is facts.task_facts(a)
        assert facts.task_facts(a) is not facts.task_facts(b)
        assert facts.task_facts(a).sql is facts.task_facts(b).sql
        assert facts.task_facts(b).dialect is two.dialect
        assert facts.task_facts(a).sql != facts.task_facts(c).sql
    finally:
        for e in (one, two, pg):
            e.dispose()


def test_warm_builds_every_statement_a_task_start_and_end_build(tmp_path: Path) -> None:
    """After ``warm()``, a new catalog's task-start facts, task-end facts, batch-start facts,
    upstream and evidence statements are found built: their builders are not called again.
    Checked in a fresh interpreter, whose builders are replaced by ones that fail."""
    code = f"""
import sys
from sqlalchemy import create_engine
from airflow_provider_bfx.catalog import adoption, facts, upstreams, txn
from airflow_provider_bfx.catalog.warm import warm, EVIDENCE_LIMIT

assert txn._BUILT == {{}}, "built before warm()"
print(sorted(warm()))

def fail(*args, **kwargs):
    raise AssertionError("built again after warm()")

facts._build_task_facts = facts._build_task_end_facts = facts._build_batch_start_facts = fail
adoption.select = upstreams.select = fail  # their builders start with select()
for url in ("sqlite:///{tmp_path / "x.db"}", "postgresql+psycopg2://"):
    cat = txn.Catalog(create_engine(url), check_schema=False)
    facts.task_facts_query(cat)
    facts.task_end_facts_query(cat)
    facts.batch_start_facts_query(cat, with_next_id=True)
    facts.batch_start_facts_query(cat, with_next_id=False)
    for slots in (1, 2, 4, 8):
        upstreams.latest_task_rows_query(cat, slots)
    adoption.batches_query(cat, EVIDENCE_LIMIT + 1)
    # what warm() did not build is built on demand: the replaced builder fails
    try:
        adoption.batches_query(cat, EVIDENCE_LIMIT + 7)
    except AssertionError:
        pass
    else:
        raise SystemExit("the check cannot tell a built statement from a new one")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["['postgresql',", "'sqlite']", "ok"]


def test_warm_connects_to_nothing() -> None:
    """Every pool's ``connect`` event, for the whole process, sees no connection."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    connects: list[object] = []

    def count(dbapi_connection: object, record: object) -> None:
        connects.append(dbapi_connection)

    event.listen(Pool, "connect", count)
    try:
        assert warm() == ["postgresql", "sqlite"]
    finally:
        event.remove(Pool, "connect", count)
    assert connects == []
