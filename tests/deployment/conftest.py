"""Tests against a real Airflow deployment (``harness.Deployment``) on loopback.

Every test collected from this folder is marked ``slow`` and ``postgres``: the metadata database
is a fresh PostgreSQL database on the server of ``BFX_TEST_PG_URL``. Without that server the
tests FAIL under ``CI=true`` and are skipped elsewhere, with the reason.

``deployment_factory`` (module-scoped) starts deployments and stops them all when the module
is done::

    @pytest.fixture(scope="module")
    def deployment(deployment_factory):
        return deployment_factory(dags=[DAGS / "my_dag.py"], env={"X": "1"})
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.deployment.harness import Deployment

HERE = Path(__file__).resolve().parent
DEPLOY_DAGS = HERE / "dags"
PG_ADMIN_URL_ENV = "BFX_TEST_PG_URL"

DeploymentFactory = Callable[..., Deployment]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees the items of the whole session: mark only those of this folder.
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.postgres)
            # Starting a deployment (~45 s, ~100 s on a loaded 2-core machine) counts toward the
            # first test's timeout; the 50-table story adds two real runs on top.
            item.add_marker(pytest.mark.timeout(900))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable ({reason}); run scripts/test to set it up")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The admin URL of the PostgreSQL server (checked reachable), or skip/fail."""
    url = os.environ.get(PG_ADMIN_URL_ENV, "").strip()
    if not url:
        _unavailable(f"{PG_ADMIN_URL_ENV} is not set")
    engine = create_engine(url, poolclass=NullPool)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        with engine.connect():
            pass
    except OperationalError as err:
        _unavailable(f"cannot connect to {shown}: {err.orig}")
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def deployment_factory(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeploymentFactory]:
    """``factory(dags=..., env=..., executor=..., parallelism=..., **kw) -> Deployment``.

    Each call starts a new deployment (in its own temp root) and returns it healthy; all are
    stopped, and their metadata databases dropped, at the end of the module.
    """
    started: list[Deployment] = []

    def factory(
        *,
        dags: Iterable[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Deployment:
        root = tmp_path_factory.mktemp("deployment")
        deployment = Deployment(root, pg_server_url=pg_server_url, dags=dags, env=env, **kwargs)
        started.append(deployment)
        return deployment.start()

    try:
        yield factory
    finally:
        for deployment in reversed(started):
            deployment.stop()
