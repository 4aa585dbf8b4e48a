"""One catalog database and the one transaction wrapper every transition runs in. No Airflow here.

The transitions are plain functions ``..._txn(cat, conn, ...)`` (:mod:`.tasks`, :mod:`.batches`,
:mod:`.leases`, :mod:`.checkpoints`, :mod:`.adoption`, :mod:`.packages`) that compose inside a
caller's transaction; :meth:`Catalog.transaction` owns the transaction and the retry, in the
style of DBOS's ``_txn`` functions behind one public wrapper.

Transient errors (connection drops, deadlock victims, SQLite busy) are retried briefly with the
whole transition re-run from its first read; what is transient is decided by the driver's error
code through the engine's dialect (:mod:`.dialects`, :mod:`.errors`), never by message text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from airflow_provider_bfx.catalog import pipeline
from airflow_provider_bfx.catalog.dialects import CatalogDialect, dialect_for
from airflow_provider_bfx.catalog.errors import CatalogUnavailableError, Verdict, misconfigured
from airflow_provider_bfx.catalog.schema import CatalogSchema, build_schema

T = TypeVar("T")

#: Per dialect name: the catalog schema and the statements built from it, shared by every
#: catalog of that dialect in this process. Building them costs more than running them (tens of
#: milliseconds per task process); a child forked after :mod:`.warm` built them inherits them.
_BUILT: dict[str, tuple[CatalogSchema, dict[str, Any]]] = {}


def _built(dialect: str) -> tuple[CatalogSchema, dict[str, Any]]:
    found = _BUILT.get(dialect)
    if found is None:
        found = _BUILT.setdefault(dialect, (build_schema(dialect), {}))
    return found


def utcnow() -> datetime:
    """Naive UTC: the catalog stores UTC without a zone on every engine."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Catalog:
    """One catalog database (PostgreSQL, SQL Server or SQLite): its engine, schema, dialect and
    clock, and the transaction wrapper. :class:`~.store.CatalogStore` adds the public verbs."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utcnow,
        retry_seconds: float = 5.0,
        check_schema: bool = True,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.s: CatalogSchema
        self.s, self._queries = _built(self.dialect)
        self.impl: CatalogDialect = dialect_for(self.dialect, self.s)
        self.clock = clock
        self.retry_seconds = retry_seconds
        self._schema_checked = not check_schema
        self._own: dict[str, Any] = {}

    def memo(self, name: str, build: Callable[[], T]) -> T:
        """A statement built once per dialect in this process (building some costs more than
        running them). ``build`` may read only the schema (``self.s``) and the dialect's name:
        the statement is shared by every catalog of this dialect (:data:`_BUILT`)."""
        if name not in self._queries:
            self._queries[name] = build()
        found: T = self._queries[name]
        return found

    def own(self, name: str, build: Callable[[], T]) -> T:
        """What is built once per catalog because it depends on this engine (a statement
        compiled for its dialect object, :mod:`.compiled`)."""
        if name not in self._own:
            self._own[name] = build()
        found: T = self._own[name]
        return found

    def transaction(
        self, work: Callable[[Connection], T], what: str, *, one_statement: bool = False
    ) -> T:
        """Run ``work(conn)`` in one transaction, re-run from its start on a transient error
        (briefly; then :class:`CatalogUnavailableError`). ``what`` names it in that error.

        ``one_statement``: ``work`` sends at most one statement, atomic on its own; where the
        engine allows it (``impl.autocommits_one_statement``: PostgreSQL) it runs outside any
        transaction and the server commits it, saving the BEGIN and the COMMIT's round trip
        (decision 0120)."""
        if not self._schema_checked:
            self._with_retries(self._check_schema, what)
            self._schema_checked = True
        autocommit = one_statement and self.impl.autocommits_one_statement

        def once() -> T:
            if autocommit:
                with self.engine.connect() as conn:
                    pipeline.autocommit(conn)
                    # Committed as any transaction, in case the engine did not autocommit
                    # after all: then a write is never dropped at check-in.
                    with conn.begin():
                        return work(conn)
            with self.engine.begin() as conn:
                return work(conn)

        return self._with_retries(once, what)

    def _check_schema(self) -> None:
        """The schema check before the first statement: one query when the catalog is current
        (no Alembic import, :mod:`.revision`); otherwise :func:`.migrate.check_schema` says what
        is wrong and which command fixes it."""
        from airflow_provider_bfx.catalog.revision import is_current

        if not is_current(self.engine):
            from airflow_provider_bfx.catalog.migrate import check_schema

            check_schema(self.engine)

    def _with_retries(self, fn: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        integrity_retries = 5
        while True:
            try:
                return fn()
            except IntegrityError:
                # Two processes registered the same package or batch row at once: the loser
                # re-runs the transition and finds the winner's row.
                integrity_retries -= 1
                if integrity_retries < 0:
                    raise
            except DBAPIError as exc:
                # Decided by the driver's error code (catalog/errors.py, decision 0090): only a
                # catalog that cannot be reached is unavailable; one that answers with an error
                # a person must fix is misconfigured, and retrying would not fix it.
                found = self.impl.diagnose(exc, self.engine)
                where = self.engine.url.render_as_string(hide_password=True)
                if found.verdict is Verdict.MISCONFIGURED:
                    raise misconfigured(exc, found, where) from exc
                if found.verdict is Verdict.OTHER:
                    raise
                if time.monotonic() >= deadline:
                    raise CatalogUnavailableError(
                        f"catalog at {where} is unavailable during {what} ({found.code}):"
                        f" {first_line(exc)}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def where(self, execution_id: object) -> str:
        """``bfx.Execution row ExecutionID=n``: how an error message names a row."""
        return f"{self.s.qualified(self.s.Execution)} row ExecutionID={execution_id}"


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
