"""Fixtures shared by the catalog tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_bfx.catalog.store import CatalogStore
from tests.story import FakeClock, deployed_store


@pytest.fixture
def store(catalog_url: str) -> Iterator[CatalogStore]:
    """A deployed catalog on ``catalog_url`` whose clock a test moves by hand (``FakeClock``);
    a test module that needs another store defines its own ``store``."""
    deployed = deployed_store(catalog_url, FakeClock())
    try:
        yield deployed
    finally:
        deployed.engine.dispose()
