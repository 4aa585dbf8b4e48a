"""The SQLite catalog engine: many processes opening a fresh catalog file at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from airflow_provider_bfx.catalog.engine import create_catalog_engine

OPENERS = 12
ROUNDS = 40


def _open_together(path: Path) -> list[str]:
    """Connect OPENERS engines to a fresh file at once; return what went wrong, if anything."""
    barrier = threading.Barrier(OPENERS)
    errors: list[str] = []

    def open_one() -> None:
        engine = create_catalog_engine(f"sqlite:///{path}")
        try:
            barrier.wait(timeout=10)
            with engine.connect() as conn:
                mode = conn.execute(text("PRAGMA journal_mode")).scalar()
            if mode != "wal":
                errors.append(f"journal_mode is {mode!r}")
        except Exception as exc:  # collected and asserted on by the test
            errors.append(repr(exc))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=open_one) for _ in range(OPENERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_engines_opening_a_fresh_file_together_all_get_wal(tmp_path: Path) -> None:
    # Switching a file to WAL needs a moment of exclusive access, and SQLite answers "database
    # is locked" to a colliding switch without waiting: the engine must retry, not fail.
    for round_ in range(ROUNDS):
        assert _open_together(tmp_path / f"fresh-{round_}.db") == []
