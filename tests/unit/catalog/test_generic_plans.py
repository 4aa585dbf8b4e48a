"""The generic plans of the prepared facts queries on PostgreSQL (decisions 0105, 0111): what a
task start reads must not grow with the rows its task package already holds (a mapped task's
package holds a row per item per run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, insert, literal, make_url, select, text
from sqlalchemy.pool import QueuePool

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.facts import task_facts_params
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.store import BatchSpec, CatalogStore, TaskSpec

ITEMS = 40
FILLER = 3_000


@pytest.fixture
def one_session(pg_url: str) -> Iterator[CatalogStore]:
    url = make_url(pg_url)
    deploy = create_catalog_engine(url)
    upgrade(deploy)
    deploy.dispose()
    engine = create_catalog_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=0)
    try:
        yield CatalogStore(engine)
    finally:
        engine.dispose()


def _item(batch: BatchSpec, i: int) -> TaskSpec:
    return TaskSpec(batch, "items", map_index=i, item_fingerprint=f"item-{i:03d}")


def test_a_mapped_items_start_reads_only_its_own_rows(one_session: CatalogStore) -> None:
    """In the generic plan the session holds for the task-start facts query (decision 0111):

    * the active-row join is answered from the partial unique index `uq_execution_one_active`
      (PackageID, ItemFingerprint): the join states the index's own predicate. Before, it read
      every row of the task package from `ix_execution_package_status` and filtered on the item;
    * the per-item lookups (the row that decides, the landed copy's writers, the first row, the
      active row's copy) read `ix_execution_lineage_package`, though the statistics say a
      package holds one row (most do here, as after a first run of many DAGs), where
      `ix_execution_package_id` costs the same and was taken: every row of the package read."""
    store = one_session
    batch = BatchSpec("mapped_dag", "run-0")
    for i in range(ITEMS):
        store.end_task(store.start_task(_item(batch, i)).execution_id, TaskOutcome.SUCCESS)
    spec = _item(batch, ITEMS)
    params = task_facts_params(spec)
    E, P = store.s.Execution, store.s.Package
    with store.engine.connect() as conn:  # the pool's one connection: the prepared statement
        # Other tasks of one row each (packages of one row, as after a first run of many
        # DAGs), enough that the planner reads indexes rather than the whole table.
        series = func.generate_series(1, FILLER)
        names = select(func.concat("t", series).label("name")).subquery("names")
        conn.execute(
            insert(P).from_select(
                ["PackageName", "DagId", "TaskId"],
                select(func.concat("filler.", names.c.name), literal("filler"), names.c.name),
            )
        )
        pkg = P.alias("pkg")
        conn.execute(
            insert(E).from_select(
                [
                    "ExternalExecutionID",
                    "PackageID",
                    "ExecutionStatus",
                    "NextLoadStatus",
                    "DagId",
                    "RunId",
                    "TaskId",
                    "LineageID",
                ],
                select(
                    func.concat("filler:", pkg.c.TaskId),
                    pkg.c.PackageID,
                    literal("S"),
                    literal("P"),
                    pkg.c.DagId,
                    literal("run-0"),
                    pkg.c.TaskId,
                    pkg.c.PackageID,
                ).where(pkg.c.DagId == "filler"),
            )
        )
        conn.commit()
        conn.exec_driver_sql("ANALYZE")
        (name,) = conn.execute(
            text("SELECT name FROM pg_prepared_statements WHERE name LIKE 'bfx_task_facts_%'")
        ).one()
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        args = ", ".join(f"%({k})s" for k in sorted(params))
        plan = "\n".join(
            row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE {name}({args})", params)
        )
        conn.rollback()

    def scans(alias: str) -> list[str]:
        return [line for line in plan.splitlines() if f" on execution {alias} " in line]

    (active,) = scans("a")
    assert "uq_execution_one_active" in active, plan
    for alias in ('"inner"', "landed_w", "first", "w"):
        found = scans(alias)
        assert found and all("ix_execution_lineage_package" in line for line in found), plan
    assert store.end_task(store.start_task(spec).execution_id, TaskOutcome.SUCCESS).changed
