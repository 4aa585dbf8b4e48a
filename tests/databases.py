"""Dropping a test's PostgreSQL database, shared by every fixture that creates one."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import ProgrammingError

#: SQLSTATE 42501: ``WITH (FORCE)`` may not terminate a backend the test's role does not own.
_INSUFFICIENT_PRIVILEGE = "42501"


def drop_database(engine: Any, name: str, *, attempts: int = 20) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)`` through an AUTOCOMMIT ``engine``.

    FORCE terminates the database's other sessions, but an autovacuum worker that PostgreSQL
    started on it after a test wrote many rows belongs to the server, not to the test's role,
    and the drop then fails with 42501. Such a worker ends by itself within moments: retry."""
    for attempt in range(attempts):
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except ProgrammingError as exc:
            code = getattr(exc.orig, "pgcode", None)
            if code != _INSUFFICIENT_PRIVILEGE or attempt == attempts - 1:
                raise
            time.sleep(0.5)
