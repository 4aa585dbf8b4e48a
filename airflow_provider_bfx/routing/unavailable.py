"""A catalog that cannot be reached (``[bfx] on_catalog_unavailable``) or that answers with an
error a person must fix (always fail, decision 0090), at a task's start."""

from __future__ import annotations

import logging
from typing import NoReturn

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import Token, format_token
from airflow_provider_bfx.catalog.errors import CatalogMisconfiguredError
from airflow_provider_bfx.exceptions import BfxError
from airflow_provider_bfx.routing.records import GateRecord, Outcome, TryKey, remember
from airflow_provider_bfx.routing.settings import BfxSettings, OnCatalogUnavailable

log = logging.getLogger("airflow_provider_bfx.routing")

#: Not one of the contract's tokens either: a catalog that answers with an error (decision 0090).
CATALOG_MISCONFIGURED = "BFX_CATALOG_MISCONFIGURED"


class BfxCatalogUnavailable(BfxError, RuntimeError):
    """The catalog could not be reached at a task's start. A plain exception on purpose:
    Airflow's retries apply, and a later try may find the catalog back (decision 0044)."""


def catalog_unavailable(key: TryKey, settings: BfxSettings, exc: Exception) -> None:
    run_unrouted = settings.on_catalog_unavailable is OnCatalogUnavailable.RUN
    line = format_token(
        Token.CATALOG_UNAVAILABLE,
        dag=key.dag_id,
        task=key.task_id,
        map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
        on_catalog_unavailable=settings.on_catalog_unavailable.value,
        action="run_unrouted" if run_unrouted else "fail",
        error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    )
    if run_unrouted:
        log.warning("%s", line)
        remember(key, GateRecord(Outcome.UNROUTED))
        return
    log.error("%s", line)
    remember(key, GateRecord(Outcome.REFUSED))
    raise BfxCatalogUnavailable(line) from exc


def catalog_misconfigured(
    key: TryKey, settings: BfxSettings, exc: CatalogMisconfiguredError
) -> NoReturn:
    """The catalog answered with an error a person must fix (wrong password, unknown database,
    missing permission, read-only, missing or outdated schema): fail before any work, whatever
    ``on_catalog_unavailable`` says. Running unrouted would redo finished work, and Airflow's
    retries would only repeat a failed login (decision 0090)."""
    error = exc.naming(settings.catalog_conn_id)
    line = format_token(
        CATALOG_MISCONFIGURED,
        dag=key.dag_id,
        task=key.task_id,
        map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
        catalog_conn_id=settings.catalog_conn_id,
        action="fail",
    )
    log.error("%s %s", line, error)
    remember(key, GateRecord(Outcome.REFUSED))
    raise AirflowFailException(
        f"{line}: nothing ran, the catalog is misconfigured ([bfx] on_catalog_unavailable"
        f" covers only a catalog that cannot be reached): {error}"
    ) from exc
