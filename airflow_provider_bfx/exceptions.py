"""Every exception the provider raises derives from :class:`BfxError`. No Airflow here.

``except BfxError`` catches anything of ours. Each class also keeps the builtin base it always had
(``RuntimeError``, ``ValueError``, ``TypeError``), so code that caught those still does.

Every class is importable from here (``from airflow_provider_bfx.exceptions import
CorruptRowError``) and from the module that raises it, where most are defined: a class's
qualified name is what ``ExecutionError.ErrorType`` records when it fails a task, so moving a
definition would change that recorded text. This module imports none of them eagerly (the catalog
modules import :class:`BfxError` from here): the names below are looked up on first use.

``catalog.errors``: ``CatalogUnavailableError`` (cannot be reached, after brief retries),
``CatalogMisconfiguredError`` (answered with an error a person must fix); ``catalog.migrate``:
``CatalogSchemaError`` (schema missing, older or newer); here: ``CatalogStateError`` (rows
contradict the request); ``catalog.codes``: ``CorruptRowError``; ``catalog.keys``:
``CatalogIdError``; ``catalog.foreach``: ``ForeachKeyError``; ``catalog.payload``:
``UnrecordablePayload``; ``hooks.catalog``: ``CatalogConnectionLookupError``;
``routing.settings``: ``BfxSettingsError``; ``routing.run_conf``: ``RunConfError``;
``routing.gate``: ``BfxRoutingError``, ``BfxRunConfError`` (also an ``AirflowFailException``);
``routing.unavailable``: ``BfxCatalogUnavailable``; ``operators.databricks``:
``BfxDatabricksRunFailed``; ``cli.main``: ``CliError``.

Two classes say "unavailable" on purpose: ``CatalogUnavailableError`` is the catalog's (no
Airflow), ``BfxCatalogUnavailable`` what a routed task fails with under ``[bfx]
on_catalog_unavailable = fail``, a plain exception so that Airflow's retries apply (decision 0044).
"""

from __future__ import annotations

import importlib
from typing import Any


class BfxError(Exception):
    """Base of every exception of airflow-provider-bfx."""


class CatalogStateError(BfxError, RuntimeError):
    """The catalog holds rows that contradict the request (e.g. ending an unknown execution)."""


_DEFINED_IN = {
    "CatalogUnavailableError": "airflow_provider_bfx.catalog.errors",
    "CatalogMisconfiguredError": "airflow_provider_bfx.catalog.errors",
    "CatalogSchemaError": "airflow_provider_bfx.catalog.migrate",
    "CorruptRowError": "airflow_provider_bfx.catalog.codes",
    "CatalogIdError": "airflow_provider_bfx.catalog.keys",
    "ForeachKeyError": "airflow_provider_bfx.catalog.foreach",
    "UnrecordablePayload": "airflow_provider_bfx.catalog.payload",
    "CatalogConnectionLookupError": "airflow_provider_bfx.hooks.catalog",
    "BfxSettingsError": "airflow_provider_bfx.routing.settings",
    "RunConfError": "airflow_provider_bfx.routing.run_conf",
    "BfxRoutingError": "airflow_provider_bfx.routing.gate",
    "BfxRunConfError": "airflow_provider_bfx.routing.gate",
    "BfxCatalogUnavailable": "airflow_provider_bfx.routing.unavailable",
    "BfxDatabricksRunFailed": "airflow_provider_bfx.operators.databricks",
    "CliError": "airflow_provider_bfx.cli.main",
}

__all__ = ["BfxError", "CatalogStateError", *_DEFINED_IN]


def __getattr__(name: str) -> Any:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
