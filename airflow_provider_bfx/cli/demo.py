"""``bfx demo``: the 50-table story in real Airflow runs, on the embedded SQLite catalog.

Runs ``example_dags/warehouse_batch.py`` twice with ``dag.test()``: run 1 fails at table 48,
run 2 resumes (the 47 loaded tables are skipped without copying again, table 48 is retried,
49 and 50 load, then merge and publish). For each run it prints every task's Airflow state next
to the catalog row that records it, then the totals. Exit code 0 only when the story held.

Everything lives in one working directory (``--dir``, default a fresh temporary directory): it is
AIRFLOW_HOME, with a SQLite metadata database, a dags folder holding the example DAG, Airflow's
log of the runs, and the embedded catalog ``bfx_catalog.db`` (no ``bfx_catalog_default``
connection is defined), kept so that you can ``SELECT`` from it afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow_provider_bfx.cli.main import CliError

DAG_FILE = "warehouse_batch.py"
RUNNER_MODULE = "airflow_provider_bfx.cli.demo_runner"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the 50-table restart story in real Airflow runs on an embedded SQLite catalog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="working directory, used as AIRFLOW_HOME (created or reused; default: a new"
        " temporary directory)",
    )
    parser.set_defaults(func=run)


def example_dag_file() -> Path:
    """``example_dags/warehouse_batch.py`` of the source tree the package is imported from.

    The example DAGs are not part of the wheel: ``bfx demo`` needs a source checkout (an
    editable install, as ``scripts/bootstrap`` makes)."""
    import airflow_provider_bfx

    package_dir = Path(airflow_provider_bfx.__file__).resolve().parent
    path = package_dir.parent / "example_dags" / DAG_FILE
    if not path.is_file():
        raise CliError(
            f"the example DAG {path} is missing: `bfx demo` runs from a source checkout of"
            " airflow-provider-bfx (pip install -e .), not from an installed wheel"
        )
    return path


def demo_environment(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for an isolated Airflow in ``home``: every ``AIRFLOW_*`` setting of the
    caller is dropped (no catalog connection, no ``[bfx]`` overrides), then ours are set."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith("AIRFLOW_")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "BFX_EXAMPLE_COPY_DIR": str(home / "copies"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def prepare(home: Path, dag_file: Path) -> None:
    """Create or reuse ``home``: the metadata database is kept (migrating it again is quick),
    the catalog and the copy log start empty so that run 1 is the first run of a lineage."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dags").mkdir(exist_ok=True)
    shutil.copy(dag_file, home / "dags" / DAG_FILE)
    for leftover in ("bfx_catalog.db", "bfx_catalog.db-wal", "bfx_catalog.db-shm"):
        (home / leftover).unlink(missing_ok=True)
    shutil.rmtree(home / "copies", ignore_errors=True)
    (home / "copies").mkdir()


def run(args: argparse.Namespace) -> int:
    dag_file = example_dag_file()
    home = (args.dir or Path(tempfile.mkdtemp(prefix="bfx-demo-"))).resolve()
    prepare(home, dag_file)
    print(f"Working directory (AIRFLOW_HOME): {home}")
    print(f"Example DAG: {dag_file}")
    sys.stdout.flush()
    # Airflow reads its configuration when it is first imported: a fresh interpreter with the
    # environment set is the only robust way to point it at this directory.
    done = subprocess.run(
        [sys.executable, "-m", RUNNER_MODULE, str(home)], env=demo_environment(home), check=False
    )
    return done.returncode
