"""``bfx demo``: the 50-table story in real Airflow runs, as a user starts it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_bfx.cli.demo import demo_environment, example_dag_file


def test_demo_environment_isolates_airflow_and_leaves_the_catalog_connection_undefined(
    tmp_path: Path,
) -> None:
    env = demo_environment(
        tmp_path,
        {
            "PATH": "/bin",
            "AIRFLOW_CONN_BFX_CATALOG_DEFAULT": "postgres://x",
            "AIRFLOW__BFX__EMBEDDED_CATALOG_PATH": "/elsewhere.db",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        },
    )
    assert env["PATH"] == "/bin"
    assert env["AIRFLOW_HOME"] == str(tmp_path)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow.db'}"
    assert env["AIRFLOW__CORE__UNIT_TEST_MODE"] == "False"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert "AIRFLOW_CONN_BFX_CATALOG_DEFAULT" not in env
    assert "AIRFLOW__BFX__EMBEDDED_CATALOG_PATH" not in env
    assert "AIRFLOW__CORE__EXECUTOR" not in env
    assert example_dag_file().name == "warehouse_batch.py"


@pytest.mark.slow
def test_bfx_demo_runs_the_story_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_bfx.cli.main", "demo", "--dir", str(home)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    log = home / "airflow.log"
    airflow_tail = log.read_text()[-4000:] if log.exists() else ""
    assert done.returncode == 0, out + done.stderr + airflow_tail
    lines = out.splitlines()
    assert len(lines) < 150
    assert f"Working directory (AIRFLOW_HOME): {home}" in out
    assert "tables re-copied in run 2: 0 of 47" in lines
    assert "run 2 Airflow states: {'skipped': 47, 'success': 5}" in lines
    assert (
        "run 2 decisions: {'ran (first attempt)': 4, 'retried': 1, 'skipped (C)': 47};"
        " retried: ['load_table_48']"
    ) in lines
    assert lines[-1] == "The story held: run 2 resumed at table 48 and re-copied nothing."
    # per task: Airflow state next to the catalog row
    run1, run2 = out.split("== Run 2")
    assert [ln.split()[:2] for ln in run1.splitlines() if ln.startswith("load_table_48 ")] == [
        ["load_table_48", "failed"]
    ]
    row48 = next(ln.split() for ln in run2.splitlines() if ln.startswith("load_table_48 "))
    assert row48[1:2] + row48[3:4] == ["success", "S/P"]
    skipped = [ln for ln in run2.splitlines() if ln.startswith("load_table_") and " C/P " in ln]
    assert len(skipped) == 47
    assert all(ln.split()[1] == "skipped" for ln in skipped)
    # the catalog is the embedded one under AIRFLOW_HOME, kept for inspection
    assert (home / "bfx_catalog.db").is_file()
    assert "batch of run 2: " in out and "LineageID=1 OriginalExecutionID=1 AttemptNumber=2" in out
