"""One :class:`CatalogStore` per catalog per process, reached through ``BfxCatalogHook``.

The store (and its engine's connection pool) is cached by the catalog's URL, not by the
connection id: the same id may point elsewhere after a connection is redefined, and a cache keyed
by id would then write one run's rows into another database. Resolving the id to its URL costs a
connection lookup (secrets backends, the API server): ~15 ms, more than a task start itself. So
the id -> URL answer is remembered for :data:`CONNECTION_TTL_SECONDS`; a redefined connection
takes effect within that time (decision 0051). A forked child starts with no cached store
(decision 0080).

The store itself is built by :meth:`BfxCatalogHook.get_store`, the one store factory; that is
where the embedded SQLite catalog (no ``bfx_catalog_default`` connection defined) is deployed on
first use (decision 0011). A catalog reached through a defined connection is never deployed
implicitly: its owner runs ``bfx catalog init``, and a missing schema fails the task with the
message that says so.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_bfx.catalog.store import CatalogStore

CONNECTION_TTL_SECONDS = 60.0

_stores: dict[str, CatalogStore] = {}
_by_conn_id: dict[str, tuple[float, CatalogStore]] = {}
_lock = threading.Lock()


def get_store(catalog_conn_id: str) -> CatalogStore:
    """The store of the catalog behind ``catalog_conn_id`` (cached per URL in this process)."""
    from airflow_provider_bfx.hooks.catalog import BfxCatalogHook

    with _lock:
        cached = _by_conn_id.get(catalog_conn_id)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
    hook = BfxCatalogHook(catalog_conn_id=catalog_conn_id)
    url = hook.sqlalchemy_url.render_as_string(hide_password=False)
    with _lock:
        store = _stores.get(url)
        if store is not None:
            _by_conn_id[catalog_conn_id] = (time.monotonic() + CONNECTION_TTL_SECONDS, store)
            return store
        store = hook.get_store()
        _stores[url] = store
        _by_conn_id[catalog_conn_id] = (time.monotonic() + CONNECTION_TTL_SECONDS, store)
        return store


def _forget_in_forked_child() -> None:
    """After ``fork``: the child must never use the parent's pooled connections.

    LocalExecutor forks workers from the scheduler and the task supervisor forks each task
    process; a pool inherited across ``fork`` would run the child's statements on the parent's
    database session (one PostgreSQL backend for several processes, interleaved protocol
    messages). ``dispose(close=False)`` drops the inherited pool without closing the sockets,
    which still belong to the parent; the child opens its own on first use. The lock is
    replaced too: another thread of the parent may have held it at the moment of the fork.
    """
    global _lock
    _lock = threading.Lock()
    for store in _stores.values():
        store.engine.dispose(close=False)
    _stores.clear()
    _by_conn_id.clear()


os.register_at_fork(after_in_child=_forget_in_forked_child)


def forget_stores() -> None:
    """Dispose every cached engine (after a fork, or between isolated runs in one process)."""
    with _lock:
        for store in _stores.values():
            store.engine.dispose()
        _stores.clear()
        _by_conn_id.clear()
