"""The embedded catalog applies only when the connection is defined NOWHERE (decision 0080).

Airflow's own lookup logs a secrets backend that raises and then reports "not defined"; the
provider must not take that for "use the embedded SQLite file", which would be another catalog
than the other components'. Fresh processes, so that Airflow's backend cache starts empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBE = """
from airflow_provider_bfx.hooks.catalog import BfxCatalogHook, CatalogConnectionLookupError
try:
    hook = BfxCatalogHook()
    print("EMBEDDED" if hook.is_embedded else "DEFINED", hook.sqlalchemy_url.database)
except CatalogConnectionLookupError as exc:
    print("LOOKUP-ERROR", exc)
"""


def _probe(tmp_path: Path, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(tmp_path), PYTHONPATH=str(REPO), **extra)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_a_failing_secrets_backend_is_an_error_not_the_embedded_catalog(tmp_path: Path) -> None:
    line = _probe(
        tmp_path,
        AIRFLOW__SECRETS__BACKEND="tests.failing_secrets_backend.FailingBackend",
        _AIRFLOW_PROCESS_CONTEXT="server",
    )
    assert line.startswith("LOOKUP-ERROR"), line
    assert "FailingBackend" in line and "vault.example is unreachable" in line
    assert not (tmp_path / "bfx_catalog.db").exists()


def test_a_connection_defined_nowhere_is_the_embedded_catalog(tmp_path: Path) -> None:
    # Outside a server context the backends are the environment and configured ones only.
    line = _probe(tmp_path)
    assert line == f"EMBEDDED {tmp_path / 'bfx_catalog.db'}", line


def test_an_unreadable_metadata_db_is_an_error_in_a_server_context(tmp_path: Path) -> None:
    # A server context (the bfx CLI, the API server) also asks the metadata DB; one that was
    # never migrated cannot say "not defined", so the embedded file is not used in its place.
    line = _probe(tmp_path, _AIRFLOW_PROCESS_CONTEXT="server")
    assert line.startswith("LOOKUP-ERROR") and "MetastoreBackend" in line, line
