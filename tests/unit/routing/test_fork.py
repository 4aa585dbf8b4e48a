"""A forked child never uses its parent's catalog connections (docs/decisions/0080).

LocalExecutor forks workers from the scheduler and the task supervisor forks each task process:
a connection pool inherited across ``fork`` would run the child's statements on the parent's
PostgreSQL session. Real processes, a real PostgreSQL server: the child's backend pid must differ
from the parent's, and the parent's pooled connection must still work after the child is gone.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import make_url, text

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.routing import catalog as routing_catalog

pytestmark = pytest.mark.postgres


def _backend_pid(conn_id: str) -> int:
    store = routing_catalog.get_store(conn_id)
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_forked_child_opens_its_own_catalog_session(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(create_catalog_engine(pg_url))
    uri = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    monkeypatch.setenv("AIRFLOW_CONN_BFX_FORK_TEST", uri)
    routing_catalog.forget_stores()
    try:
        parent = _backend_pid("bfx_fork_test")
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read)
            try:
                os.write(write, str(_backend_pid("bfx_fork_test")).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            child_pid = int(answer.read() or 0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_pid and child_pid != parent
        # The parent's pooled connection survived the child (its socket was not closed there).
        assert _backend_pid("bfx_fork_test") == parent
    finally:
        routing_catalog.forget_stores()
