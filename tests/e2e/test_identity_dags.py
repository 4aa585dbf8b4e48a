"""Dotted DAG ids and task groups through real Airflow runs (issue 9, item 1; decision 0093).

Under 0.1.0, DAG ``bfx_dot.b``'s batch package was ``bfx_dot``'s task package ``b``: after
``bfx_dot``'s ``b`` failed, the first run of ``bfx_dot.b`` resumed ``bfx_dot``'s lineage (attempt
2, ``BFX_BATCH_RESUME``) from another DAG's task row. And ``bfx_dot``'s ``g.c`` and
``bfx_dot.g``'s ``c`` were one package.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import Catalog, bfx_log, run_dag
from sqlalchemy import select

pytestmark = pytest.mark.slow


def test_dotted_dag_ids_and_task_groups_keep_their_own_packages_and_lineages(
    catalog: Catalog, copies_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = run_dag("bfx_dot", conf={"fail_tasks": ["b"]})
    assert (first.state, first.state_of("g.c"), first.state_of("b")) == (
        "failed",
        "success",
        "failed",
    )
    caplog.clear()

    other = run_dag("bfx_dot.b")
    assert other.state == "success"
    batch = catalog.batch_row("bfx_dot.b", other.run_id)
    assert (batch.ExecutionStatus, batch.AttemptNumber) == ("S", 1)
    assert batch.OriginalExecutionID == batch.ExecutionID  # its own fresh lineage
    assert "[BFX_BATCH_RESUME]" not in bfx_log(caplog)

    grouped = run_dag("bfx_dot.g")
    assert (grouped.state, grouped.state_of("c")) == ("success", "success")

    again = run_dag("bfx_dot")  # resumes its own lineage only
    assert (again.state, again.state_of("g.c"), again.state_of("b")) == (
        "success",
        "skipped",
        "success",
    )

    store = catalog.store()
    try:
        P = store.s.Package
        with store.engine.connect() as conn:
            rows = conn.execute(select(P.c.DagId, P.c.TaskId, P.c.PackageName, P.c.IsBatch))
            packages = {(r.DagId, r.TaskId): (r.PackageName, r.IsBatch) for r in rows}
    finally:
        store.engine.dispose()
    assert packages == {
        ("bfx_dot", None): ("bfx_dot", 1),
        ("bfx_dot", "g.c"): ("bfx_dot/g.c", 0),
        ("bfx_dot", "b"): ("bfx_dot/b", 0),
        ("bfx_dot.b", None): ("bfx_dot.b", 1),
        ("bfx_dot.b", "c"): ("bfx_dot.b/c", 0),
        ("bfx_dot.b", "d"): ("bfx_dot.b/d", 0),
        ("bfx_dot.g", None): ("bfx_dot.g", 1),
        ("bfx_dot.g", "c"): ("bfx_dot.g/c", 0),
    }
    ran = Counter((copies_dir / "executions").read_text().splitlines())
    assert ran == Counter(
        {
            "bfx_dot:g.c": 1,  # skipped in the second run: not repeated
            "bfx_dot:b": 1,  # failed (before writing) once, then ran
            "bfx_dot.b:c": 1,
            "bfx_dot.b:d": 1,
            "bfx_dot.g:c": 1,
        }
    )
