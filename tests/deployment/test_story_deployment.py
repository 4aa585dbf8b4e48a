"""The 50-table story in a real deployment, on each catalog configuration.

API server, scheduler, DAG processor, triggerer, LocalExecutor (parallelism 4), PostgreSQL
metadata DB; the catalog is a connection added with ``airflow connections add``, an environment
variable, or the embedded default. The story itself (and what it asserts) is in
``fifty_tables.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment.catalogs import KINDS, CatalogSetup
from tests.deployment.conftest import DeploymentFactory
from tests.deployment.fifty_tables import DAG_FILE, play_fifty_table_story
from tests.deployment.harness import Deployment


@pytest.fixture(scope="module", params=KINDS)
def setup(
    request: pytest.FixtureRequest,
    deployment_factory: DeploymentFactory,
    pg_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployment, CatalogSetup, Path]]:
    catalog = CatalogSetup.create(request.param, pg_server_url)
    copies = tmp_path_factory.mktemp("copies")
    deployment = deployment_factory(
        dags=[DAG_FILE],
        env={**catalog.env(), "BFX_EXAMPLE_COPY_DIR": str(copies)},
        parallelism=4,
    )
    catalog.after_start(deployment)
    try:
        yield deployment, catalog, copies
    finally:
        deployment.stop()  # before the next configuration starts: one deployment at a time
        catalog.drop()


def test_fifty_table_story(setup: tuple[Deployment, CatalogSetup, Path]) -> None:
    deployment, catalog, copies = setup
    play_fifty_table_story(deployment, catalog, copies)
