"""The 50-table story, played against a running deployment: shared by the LocalExecutor tests
(each catalog configuration) and the CeleryExecutor one.

Run 1 fails at table 48; run 2 skips the 47 finished tables (skipped in Airflow, ``C`` in the
catalog, not copied again; most of them skipped ahead, with no task process), loads 48 again,
then 49, 50, merge and publish. The scheduler stays healthy throughout and the batches are
closed by the DAG callbacks in the DAG processor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.deployment.catalogs import CatalogSetup, wait_batch_closed
from tests.deployment.harness import HEALTHY_COMPONENTS, Deployment

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "example_dags" / "warehouse_batch.py"
DAG_ID = "warehouse_batch"
TABLES = [f"table_{n:02d}" for n in range(1, 51)]


def _healthy(deployment: Deployment) -> None:
    health = deployment.api.health()
    assert all(health[c]["status"] == "healthy" for c in HEALTHY_COMPONENTS), health


def _copies(copies: Path, run_id: str) -> set[str]:
    return {
        f.name.removesuffix(".copies")
        for f in copies.glob("*.copies")
        if run_id in f.read_text().splitlines()
    }


def play_fifty_table_story(
    deployment: Deployment,
    catalog: CatalogSetup,
    copies: Path,
    run_timeout: float = 240,
    between_runs: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Play both runs and check states, rows and copies; returns the two run ids.
    ``between_runs(run1)`` is called once run 1 has failed and its batch is closed."""
    api = deployment.api
    api.wait_dag_parsed(DAG_ID, timeout=90)
    scheduler_pid = deployment.pids()["scheduler"]

    run1 = api.trigger(DAG_ID, conf={"fail_tables": ["load_table_48"]})
    assert api.wait_run(DAG_ID, run1, timeout=run_timeout) == "failed"
    _healthy(deployment)
    states1 = api.task_states(DAG_ID, run1)
    assert states1[("load_table_48", -1)] == "failed"
    assert states1[("merge", -1)] == "upstream_failed"
    assert sum(1 for s in states1.values() if s == "success") == 47
    batch1 = wait_batch_closed(catalog, deployment, DAG_ID, run1)  # by the DAG callback
    assert (batch1.ExecutionStatus, batch1.NextLoadStatus) == ("F", "R")
    rows1 = catalog.task_rows(deployment, DAG_ID, run1)
    assert (rows1["load_table_48"].ExecutionStatus, rows1["load_table_48"].NextLoadStatus) == (
        "F",
        "R",
    )
    assert all(rows1[f"load_{t}"].NextLoadStatus == "C" for t in TABLES[:47])
    assert _copies(copies, run1) == set(TABLES[:47])
    if between_runs is not None:
        between_runs(run1)

    run2 = api.trigger(DAG_ID)
    assert api.wait_run(DAG_ID, run2, timeout=run_timeout) == "success"
    _healthy(deployment)
    states2 = api.task_states(DAG_ID, run2)
    assert Counter(states2.values()) == Counter({"skipped": 47, "success": 5})
    assert {t for (t, _), s in states2.items() if s == "success"} == {
        "load_table_48",
        "load_table_49",
        "load_table_50",
        "merge",
        "publish",
    }
    assert _copies(copies, run2) == {"table_48", "table_49", "table_50"}  # nothing re-copied
    rows2 = catalog.task_rows(deployment, DAG_ID, run2)
    assert Counter(r.ExecutionStatus for r in rows2.values()) == Counter({"C": 47, "S": 5})
    # Skip ahead (decision 0106): the first of the five first loads wrote the rows of the
    # completed loads Airflow had not scheduled yet (try 0) and Airflow skipped them with no
    # task process (no hostname). A load Airflow scheduled in the meantime starts anyway and
    # reuses its row written ahead: one row per task (the counts above), a process for it.
    ahead = {t for t, r in rows2.items() if r.ExecutionStatus == "C" and r.TryNumber == 0}
    ran = {ti["task_id"] for ti in api.task_instances(DAG_ID, run2) if ti.get("hostname")}
    assert len(ahead - ran) >= 30, (sorted(ahead), sorted(ran))
    assert len(ran) <= 52 - 30
    assert rows2["load_table_48"].OriginalExecutionID == rows1["load_table_48"].ExecutionID
    batch2 = wait_batch_closed(catalog, deployment, DAG_ID, run2)
    assert (batch2.ExecutionStatus, batch2.NextLoadStatus) == ("S", "P")
    assert (batch2.OriginalExecutionID, batch2.AttemptNumber) == (batch1.ExecutionID, 2)
    # The merge read the replayed outputs of the skipped loads: 50 tables, all rows.
    merged = api.call(
        "GET", f"dags/{DAG_ID}/dagRuns/{run2}/taskInstances/merge/xcomEntries/return_value"
    )
    assert '"tables": 50' in str(merged["value"]).replace("'", '"')
    # The scheduler never restarted, and nothing of the provider ran in it. (Its output also
    # carries the lines of the task processes its LocalExecutor workers supervise: those name
    # their task instance, ti_id=...)
    assert deployment.pids()["scheduler"] == scheduler_pid
    own = [
        line
        for line in deployment.log_text("scheduler").splitlines()
        if "airflow_provider_bfx" in line and "ti_id=" not in line
    ]
    assert own == []
    if catalog.kind != "embedded":
        assert not (Path(deployment.airflow_home) / "bfx_catalog.db").exists()
    return run1, run2
