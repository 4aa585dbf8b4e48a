"""What differs between the catalog's engines, one small class per engine. No Airflow here.

In the style of Alembic's ``DefaultImpl`` subclasses: :class:`CatalogDialect` holds the default,
each engine's subclass overrides what its engine does differently and names the engine in
``__dialect__``; :func:`dialect_for` picks the class by the SQLAlchemy dialect name. The rest of
the catalog asks the dialect object instead of branching on the engine's name:

* ``lock``: how a transition's first read locks the row it serialises on;
* ``next_id``: how a new ``ExecutionID`` is known before its INSERT;
* ``diagnose``: what a failed call means (unavailable, transient, misconfigured, other), read
  from the driver's error code by :mod:`.errors` (decision 0090).
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Engine, Select, cast, func, literal, select

from airflow_provider_bfx.catalog.errors import Diagnosis, diagnose
from airflow_provider_bfx.catalog.schema import CatalogSchema

_DIALECTS: dict[str, type[CatalogDialect]] = {}


class CatalogDialect:
    """The default behaviour; an engine's subclass overrides what its engine does otherwise."""

    __dialect__: ClassVar[str] = "default"
    #: Whether a transition of one statement runs outside any transaction, the server
    #: committing the statement on its own (:meth:`.txn.Catalog.transaction`'s
    #: ``one_statement``): no BEGIN and no COMMIT to send. Default: in a transaction, as any
    #: other (SQLite's ``BEGIN IMMEDIATE`` is the write lock; SQL Server is not run here).
    autocommits_one_statement: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _DIALECTS[cls.__dialect__] = cls

    def __init__(self, schema: CatalogSchema) -> None:
        self.s = schema

    @property
    def name(self) -> str:
        return self.__dialect__

    def lock(self, query: Select[Any], table: Any) -> Select[Any]:
        """``query`` reading ``table``'s row under a write lock held to the end of the
        transaction. Default: the transaction already holds the lock."""
        return query

    def next_id(self) -> Any | None:
        """The next ExecutionID as a scalar expression, so that a row's OriginalExecutionID and
        AuditID can be set to it by the INSERT itself (one statement instead of INSERT +
        UPDATE). Default: not known before the INSERT (None): an identity value, then an
        UPDATE."""
        return None

    def next_id_column(self) -> Any:
        """:meth:`next_id` as a column of the facts query (NULL when it is not known)."""
        found = self.next_id()
        return (literal(None) if found is None else found).label("next_id")

    def next_package_id(self) -> Any | None:
        """The next PackageID as a scalar expression, so that a package seen for the first
        time is registered by a write that reads nothing back (decision 0108). Default: not
        known before the INSERT (None): the package is inserted and read back."""
        return None

    def typed(self, value: Any, type_: Any) -> Any:
        """``value`` (a bound parameter) as a column of a SELECT that feeds an INSERT: where the
        server would not infer its type from the column it lands in, a CAST. Default: as it is
        (SQLite stores what it is given; a CAST to ``DATETIME`` there would make a number)."""
        return value

    def diagnose(self, exc: BaseException, engine: Engine | None = None) -> Diagnosis:
        """What a failed catalog call means, by the driver's error code (:mod:`.errors`)."""
        return diagnose(exc, engine)


class PostgresDialect(CatalogDialect):
    """PostgreSQL: ``FOR NO KEY UPDATE OF`` the row; ids from the identity's sequence."""

    __dialect__ = "postgresql"
    autocommits_one_statement = True  # one round trip instead of two (decision 0120)

    def lock(self, query: Select[Any], table: Any) -> Select[Any]:
        # NO KEY UPDATE: transitions still exclude each other (every one takes this mode),
        # but an INSERT whose foreign key points at the locked row (a task package under the
        # DAG package) is not blocked by it. With FOR UPDATE a batch start holding the DAG
        # package's lock while it waits for the batch row, and a task start holding the batch
        # row while it registers its task package under that DAG package, deadlocked when a
        # run's first tasks started together (decision 0105).
        return query.with_for_update(of=table, key_share=True)

    def next_id(self) -> Any | None:
        E = self.s.Execution
        seq = func.pg_get_serial_sequence(f"{self.s.schema}.{E.name}", E.c.ExecutionID.name)
        return func.nextval(seq)

    def typed(self, value: Any, type_: Any) -> Any:
        # A parameter in a SELECT list is text to PostgreSQL (a prepared statement's $n
        # included): it would not go into a timestamp or integer column.
        return cast(value, type_)

    def next_package_id(self) -> Any | None:
        P = self.s.Package
        return func.nextval(
            func.pg_get_serial_sequence(f"{self.s.schema}.{P.name}", P.c.PackageID.name)
        )


class MssqlDialect(CatalogDialect):
    """SQL Server: ``WITH (UPDLOCK, ROWLOCK)``; an identity read back after the INSERT."""

    __dialect__ = "mssql"

    def lock(self, query: Select[Any], table: Any) -> Select[Any]:
        return query.with_hint(table, "WITH (UPDLOCK, ROWLOCK)", "mssql")


class SqliteDialect(CatalogDialect):
    """SQLite: ``BEGIN IMMEDIATE`` already holds the write lock, so the next id is the
    largest plus one (this transaction is the only writer)."""

    __dialect__ = "sqlite"

    def next_id(self) -> Any | None:
        E = self.s.Execution
        return select(func.coalesce(func.max(E.c.ExecutionID), 0) + 1).scalar_subquery()

    def next_package_id(self) -> Any | None:
        P = self.s.Package
        return select(func.coalesce(func.max(P.c.PackageID), 0) + 1).scalar_subquery()


def dialect_for(name: str, schema: CatalogSchema) -> CatalogDialect:
    """The dialect object of an engine named ``name`` (SQLAlchemy's ``dialect.name``)."""
    return _DIALECTS.get(name, CatalogDialect)(schema)
