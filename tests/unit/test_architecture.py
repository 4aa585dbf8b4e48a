"""The house's rules (docs/architecture.md, decision 0096), checked on the source.

* no import cycle, counting deferred (in-function) imports too (``scripts/import-graph``);
* the catalog imports nothing from Airflow; routing, callbacks, operators, plugins, the audit
  log and the resume in place hold no SQL
  (they import nothing from SQLAlchemy);
* every exception class of the package derives from ``BfxError``;
* every name imported from ``catalog.store`` before the split still is.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_provider_bfx
from airflow_provider_bfx.exceptions import BfxError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "airflow_provider_bfx"


def imported_modules(path: Path) -> set[str]:
    """Every module name an ``import`` statement of ``path`` names (at any depth)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_import_graph_has_no_cycle() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import-graph"), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycle" in done.stdout


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (PACKAGE / "catalog").rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_catalog_imports_nothing_from_airflow(path: Path) -> None:
    airflow = {m for m in imported_modules(path) if m == "airflow" or m.startswith("airflow.")}
    assert not airflow, f"{path.relative_to(REPO)} imports {sorted(airflow)}"


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *(PACKAGE / "routing").rglob("*.py"),
            *(PACKAGE / "operators").rglob("*.py"),
            *(PACKAGE / "plugins").rglob("*.py"),
            PACKAGE / "callbacks.py",
            PACKAGE / "audit.py",
            PACKAGE / "resume_in_place.py",
        ]
    ),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_airflow_glue_holds_no_sql(path: Path) -> None:
    sql = {m for m in imported_modules(path) if m.split(".")[0] == "sqlalchemy"}
    assert not sql, f"{path.relative_to(REPO)} imports {sorted(sql)}"


def test_every_exception_of_the_package_derives_from_bfx_error() -> None:
    found = []
    for info in pkgutil.walk_packages(airflow_provider_bfx.__path__, "airflow_provider_bfx."):
        if ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found.append(cls)
                assert issubclass(cls, BfxError), f"{cls.__module__}.{cls.__qualname__}"
    assert len(found) >= 15


def test_the_store_still_exports_every_name_it_did() -> None:
    from airflow_provider_bfx.catalog import store

    for name in (
        "BatchEnded",
        "BatchSpec",
        "CatalogStateError",
        "CatalogStore",
        "CatalogUnavailableError",
        "Checkpoint",
        "ExpiredLease",
        "RunAwaitingEvidence",
        "RunEvidence",
        "SELF",
        "TaskEnded",
        "TaskSpec",
        "TaskStarted",
        "decides",
        "default_lease_owner",
        "utcnow",
    ):
        assert hasattr(store, name), name
