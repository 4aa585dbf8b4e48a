"""A catalog that cannot be reached at a task's start: fail before any work, or run unrouted.

A catalog that answers with an error (here: a wrong password) is misconfigured, not unreachable:
the task fails before any work whatever ``on_catalog_unavailable`` says (decision 0090)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bfx_log, run_dag

from airflow_provider_bfx.routing.catalog import forget_stores

pytestmark = pytest.mark.slow

DAG_ID = "bfx_e2e_tiny"


@pytest.fixture
def unreachable_catalog(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Path]:
    """``bfx_catalog_default`` is a PostgreSQL server nobody listens for (connection refused)."""
    for name in [n for n in os.environ if n.startswith("AIRFLOW__BFX__")]:
        monkeypatch.delenv(name)
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_BFX_CATALOG_DEFAULT",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": port,
                "login": "bfx",
                "password": "bfx",
                "schema": "bfx_catalog",
            }
        ),
    )
    monkeypatch.setenv("BFX_EXAMPLE_COPY_DIR", str(tmp_path))
    try:
        yield tmp_path
    finally:
        forget_stores()


@pytest.fixture
def wrong_password_catalog(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str
) -> Iterator[Path]:
    """``bfx_catalog_default`` is a deployed PostgreSQL catalog, defined with a wrong password."""
    from sqlalchemy import make_url

    from airflow_provider_bfx.catalog.engine import create_catalog_engine
    from airflow_provider_bfx.catalog.migrate import upgrade

    for name in [n for n in os.environ if n.startswith("AIRFLOW__BFX__")]:
        monkeypatch.delenv(name)
    engine = create_catalog_engine(pg_url)
    upgrade(engine)  # `bfx catalog init` ran: only the password of the connection is wrong
    engine.dispose()
    parts = make_url(pg_url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_BFX_CATALOG_DEFAULT",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": parts.host,
                "port": parts.port,
                "login": parts.username,
                "password": "not-the-password",
                "schema": parts.database,
            }
        ),
    )
    monkeypatch.setenv("BFX_EXAMPLE_COPY_DIR", str(tmp_path))
    try:
        yield tmp_path
    finally:
        forget_stores()


def ran(folder: Path) -> list[str]:
    path = folder / "executions"
    return path.read_text().splitlines() if path.exists() else []


def test_unreachable_catalog_fails_the_task_before_any_work(
    unreachable_catalog: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = run_dag(DAG_ID)
    assert run.state == "failed"
    assert run.state_of("work") == "failed"
    assert run.state_of("after") == "upstream_failed"
    assert ran(unreachable_catalog) == []  # the task's own code never ran
    log = bfx_log(caplog)
    assert "[BFX_CATALOG_UNAVAILABLE] dag=bfx_e2e_tiny task=work" in log
    assert "action=fail" in log


def test_unreachable_catalog_runs_unrouted_when_configured(
    unreachable_catalog: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__ON_CATALOG_UNAVAILABLE", "run")
    run = run_dag(DAG_ID)
    assert run.state == "success"
    assert run.state_of("work") == run.state_of("after") == "success"
    assert [line.split(":")[0] for line in ran(unreachable_catalog)] == ["work", "after"]
    log = bfx_log(caplog)
    assert "[BFX_CATALOG_UNAVAILABLE] dag=bfx_e2e_tiny task=work" in log
    assert "action=run_unrouted" in log


def test_wrong_password_fails_the_task_before_any_work_although_unavailable_means_run(
    wrong_password_catalog: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW__BFX__ON_CATALOG_UNAVAILABLE", "run")
    run = run_dag(DAG_ID)
    assert run.state == "failed"
    assert run.state_of("work") == "failed"
    assert run.state_of("after") == "upstream_failed"
    assert ran(wrong_password_catalog) == []  # the task's own code never ran
    log = bfx_log(caplog)
    assert "[BFX_CATALOG_MISCONFIGURED] dag=bfx_e2e_tiny task=work" in log
    assert "catalog_conn_id=bfx_catalog_default action=fail" in log
    assert "password authentication failed" in log  # the server's reason
    assert "check the login, password and database name of Airflow connection" in log
    assert "run_unrouted" not in log
