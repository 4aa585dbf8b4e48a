"""``bfx.foreach`` and checkpoints on the execution handle (DESIGN.md §5), on a real catalog.

The loop's resume decision is pure (``catalog/foreach.py``); the handle reads the recorded
progress, applies the version-mismatch policy and writes one ``FOREACH_PROGRESS`` row per finished
item. A worker death is a real process SIGKILLed mid-loop (``tests/foreach_worker.py``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy import select

from airflow_provider_bfx.catalog import foreach as loops
from airflow_provider_bfx.catalog.codes import CheckpointType, VersionMismatchPolicy
from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.machine import TaskOutcome
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.routing.handle import ExecutionHandle
from tests.foreach_worker import DAG_ID, LEASE_SECONDS, TASK_ID, open_handle

REPO = Path(__file__).resolve().parents[3]
ITEMS = [{"name": f"item-{n}", "rows": n * 10} for n in range(1, 101)]


@pytest.fixture
def store(catalog_url: str) -> Any:
    engine = create_catalog_engine(catalog_url)
    upgrade(engine)
    yield CatalogStore(engine)
    engine.dispose()


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["name"] for i in items]


def fail_after(
    store: CatalogStore, run_id: str, items: list[dict[str, Any]], done: int, **kw: Any
) -> list[str]:
    """One attempt that works on ``items`` and fails (finally) after ``done`` of them."""
    handle = open_handle(store, run_id, **kw)
    worked: list[str] = []
    with pytest.raises(RuntimeError, match="table load failed"):
        for item in handle.foreach(items, key=lambda i: i["name"]):
            if len(worked) == done:
                raise RuntimeError("table load failed")
            worked.append(item["name"])
    store.end_task(handle.execution_id, TaskOutcome.FINAL_FAILURE, error_message="failed")
    store.end_batch(DAG_ID, run_id, succeeded=False)
    return worked


def finish(store: CatalogStore, run_id: str, items: list[dict[str, Any]], **kw: Any) -> list[str]:
    """One attempt that works on ``items`` to the end."""
    handle = open_handle(store, run_id, **kw)
    worked = [item["name"] for item in handle.foreach(items, key=lambda i: i["name"])]
    store.end_task(handle.execution_id, TaskOutcome.SUCCESS)
    store.end_batch(DAG_ID, run_id, succeeded=True)
    return worked


def bfx_lines(caplog: pytest.LogCaptureFixture, token: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"[{token}]" in r.getMessage()]


# -- the pure decision ---------------------------------------------------------------------------


def test_resume_point_is_the_longest_contiguous_matching_prefix() -> None:
    fps = loops.item_fingerprints(["a", "b", "c", "d"])
    assert loops.resume_point(fps, {}) == loops.ResumePoint(0, 4, "fresh")
    assert loops.resume_point(fps, {0: fps[0], 1: fps[1]}) == loops.ResumePoint(2, 4, "missing")
    # Item 3 was done too, but item 2 is missing: contiguous, so 2 and 3 run again.
    assert loops.resume_point(fps, {0: fps[0], 1: fps[1], 3: fps[3]}).resumed_at == 2
    assert loops.resume_point(fps, {0: fps[0], 1: "other"}) == loops.ResumePoint(1, 4, "changed")
    assert loops.resume_point(fps, dict(enumerate(fps))) == loops.ResumePoint(4, 4, "complete")
    assert loops.resume_point(fps[:2], dict(enumerate(fps))).skipped == 2  # a shorter list


def test_keys_are_typed_json() -> None:
    assert loops.key_fingerprint(1) != loops.key_fingerprint("1")
    assert loops.key_fingerprint(("t", 1)) == loops.key_fingerprint(["t", 1])
    assert loops.key_fingerprint({"b": 1, "a": 2}) == loops.key_fingerprint({"a": 2, "b": 1})


def test_duplicate_keys_are_refused_naming_both_items() -> None:
    with pytest.raises(loops.ForeachKeyError, match=r"items 1 and 3 have the same key 'b'"):
        loops.item_fingerprints(["a", "b", "c", "b"])


def test_a_key_that_is_not_json_is_refused() -> None:
    with pytest.raises(loops.ForeachKeyError, match=r"the key of item 0 .* is not JSON"):
        loops.item_fingerprints([object()])


# -- foreach on a real catalog -------------------------------------------------------------------


def test_a_finished_loop_writes_one_progress_row_per_item(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    assert list(handle.foreach(ITEMS[:5], key=lambda i: i["name"])) == ITEMS[:5]
    rows = store.read_checkpoints(handle.scope_key, CheckpointType.FOREACH_PROGRESS)
    assert [(r.node, r.iteration_key, r.payload) for r in rows] == [
        (loops.FOREACH_NODE, str(i), {"index": i, "key": f"item-{i + 1}"}) for i in range(5)
    ]
    assert [r.item_fingerprint for r in rows] == loops.item_fingerprints(names(ITEMS[:5]))
    assert {r.operator_fingerprint for r in rows} == {"v1"}


def test_resumed_attempt_does_only_the_items_after_the_failure(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    assert fail_after(store, "run-1", ITEMS, 61) == names(ITEMS[:61])
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    assert finish(store, "run-2", ITEMS) == names(ITEMS[61:])  # items 62-100
    (line,) = bfx_lines(caplog, "BFX_FOREACH_RESUME")
    assert "skipped=61 resumed_at=61 total=100 reason=missing" in line


def test_a_list_changed_at_item_30_resumes_at_item_30(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    fail_after(store, "run-1", ITEMS, 61)
    changed = [*ITEMS[:29], {"name": "item-30-v2", "rows": 0}, *ITEMS[30:]]
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    assert finish(store, "run-2", changed) == names(changed[29:])
    (line,) = bfx_lines(caplog, "BFX_FOREACH_RESUME")
    assert "skipped=29 resumed_at=29 total=100 reason=changed" in line


def test_a_reordered_list_resumes_at_the_first_mismatch(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    fail_after(store, "run-1", ITEMS, 61)
    reordered = [*ITEMS[:40], *reversed(ITEMS[40:50]), *ITEMS[50:]]  # 41-50 reversed
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    assert finish(store, "run-2", reordered) == names(reordered[40:])
    (line,) = bfx_lines(caplog, "BFX_FOREACH_RESUME")
    assert "skipped=40 resumed_at=40" in line


def test_a_third_attempt_resumes_from_where_the_second_failed(store: CatalogStore) -> None:
    fail_after(store, "run-1", ITEMS, 10)
    assert fail_after(store, "run-2", ITEMS, 15) == names(ITEMS[10:25])
    assert finish(store, "run-3", ITEMS) == names(ITEMS[25:])


def test_an_item_left_by_break_or_an_exception_is_not_finished(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    for item in handle.foreach(ITEMS[:5], key=lambda i: i["name"]):
        if item["name"] == "item-3":
            break
    store.end_task(handle.execution_id, TaskOutcome.FINAL_FAILURE, error_message="stopped")
    store.end_batch(DAG_ID, "run-1", succeeded=False)
    assert finish(store, "run-2", ITEMS[:5]) == ["item-3", "item-4", "item-5"]


def test_duplicate_keys_fail_before_any_item_runs_and_write_nothing(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    worked: list[str] = []
    with pytest.raises(loops.ForeachKeyError, match="items 0 and 2 have the same key 'a'"):
        for item in handle.foreach(["a", "b", "a"]):
            worked.append(item)
    assert worked == []
    assert store.read_foreach_progress(handle.scope_key, loops.FOREACH_NODE) == {}


def test_two_loops_of_one_task_keep_their_own_progress(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    assert list(handle.foreach(["a", "b"])) == ["a", "b"]
    with pytest.raises(RuntimeError):
        for item in handle.foreach(["x", "y", "z"]):
            if item == "z":
                raise RuntimeError("second loop failed")
    store.end_task(handle.execution_id, TaskOutcome.FINAL_FAILURE, error_message="failed")
    store.end_batch(DAG_ID, "run-1", succeeded=False)
    again = open_handle(store, "run-2")
    assert list(again.foreach(["a", "b"])) == []
    assert list(again.foreach(["x", "y", "z"])) == ["z"]
    assert list(again.foreach(["n"], node="named")) == ["n"]


def test_a_worker_killed_mid_loop_resumes_after_the_last_finished_item(
    catalog_url: str, store: CatalogStore, tmp_path: Path
) -> None:
    """Real processes: the first attempt SIGKILLs itself as it reaches item 62. Its row stays
    active under a lease nobody renews; once the lease expired, the next run's start marks it
    A/R (BFX_LEASE_EXPIRED), and its loop does items 62-100 only."""
    work = tmp_path / "work.txt"

    def attempt(run_id: str, die_at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.foreach_worker", catalog_url, run_id]
            + [json.dumps(ITEMS), str(work), str(die_at)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = attempt("run-1", 61)
    assert first.returncode == -9, first.stderr
    assert work.read_text().split() == names(ITEMS[:61])
    (killed,) = [r for r in store.executions(DAG_ID, "run-1") if r.TaskId == TASK_ID]
    assert (killed.ExecutionStatus, killed.LeaseOwner is not None) == ("E", True)

    time.sleep(LEASE_SECONDS + 0.5)
    second = attempt("run-2", -1)
    assert second.returncode == 0, second.stderr
    assert work.read_text().split() == names(ITEMS)  # every item exactly once
    said = second.stdout + second.stderr  # wherever Airflow's logging config sends it
    (expired,) = [line for line in said.splitlines() if "[BFX_LEASE_EXPIRED]" in line]
    for fact in (f"execution_id={killed.ExecutionID} ", f"lease_owner={killed.LeaseOwner} "):
        assert fact in expired
    assert "next_load_status=R" in expired
    assert "[BFX_FOREACH_RESUME] skipped=61 resumed_at=61 total=100" in said
    (stale,) = [r for r in store.executions(DAG_ID, "run-1") if r.TaskId == TASK_ID]
    assert stale.ExecutionStatus == "A"  # its R instruction was served, then closed with the run


# -- checkpoints -----------------------------------------------------------------------------------

PAYLOAD = {
    "watermark": "2026-11-22T02:00:00",
    "rows": [1, 2.5, None, True],
    "nested": {"ünïcode": "✓", "empty": {}},
}


def test_checkpoint_payload_round_trips_into_a_later_attempt(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    handle.checkpoint("extract", PAYLOAD)
    handle.checkpoint("extract", {**PAYLOAD, "rows": []})  # overwritten, not appended
    assert handle.get_checkpoint("extract") == {**PAYLOAD, "rows": []}
    store.end_task(handle.execution_id, TaskOutcome.FINAL_FAILURE, error_message="failed")
    store.end_batch(DAG_ID, "run-1", succeeded=False)
    later = open_handle(store, "run-2")
    assert later.get_checkpoint("extract") == {**PAYLOAD, "rows": []}
    assert later.get_checkpoint("never-written", default="none") == "none"


def test_a_payload_that_is_not_json_is_refused_naming_the_node(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    with pytest.raises(TypeError, match=r"checkpoint 'extract': payload is not JSON-serial"):
        handle.checkpoint("extract", {"at": object()})
    assert handle.get_checkpoint("extract") is None  # nothing half-written


def changed_definition(
    store: CatalogStore, policy: VersionMismatchPolicy
) -> tuple[ExecutionHandle, list[str]]:
    """Attempt 1 (definition v1) checkpoints a node and 3 of 5 items and fails; attempt 2 runs
    definition v2 under ``policy``. Returns attempt 2's handle and the first loop's item keys."""
    handle = open_handle(store, "run-1", operator_fingerprint="v1")
    handle.checkpoint("extract", PAYLOAD)
    items = ["a", "b", "c", "d", "e"]
    with pytest.raises(RuntimeError):
        for item in handle.foreach(items):
            if item == "d":
                raise RuntimeError("failed at d")
    store.end_task(handle.execution_id, TaskOutcome.FINAL_FAILURE, error_message="failed")
    store.end_batch(DAG_ID, "run-1", succeeded=False)
    return open_handle(store, "run-2", operator_fingerprint="v2", policy=policy), items


def test_fingerprint_policy_warn_reuses_checkpoints_and_says_so(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    handle, items = changed_definition(store, VersionMismatchPolicy.WARN)
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    assert handle.get_checkpoint("extract") == PAYLOAD
    assert list(handle.foreach(items)) == ["d", "e"]
    lines = bfx_lines(caplog, "BFX_FINGERPRINT_MISMATCH")
    assert len(lines) == 2
    assert "policy=WARN node=extract recorded=v1 current=v2" in lines[0]
    assert "node=foreach" in lines[1] and "checkpoints=3" in lines[1]


def test_fingerprint_policy_rerun_discards_checkpoints(
    store: CatalogStore, caplog: pytest.LogCaptureFixture
) -> None:
    handle, items = changed_definition(store, VersionMismatchPolicy.RERUN)
    caplog.set_level(logging.INFO, logger="airflow_provider_bfx")
    assert handle.get_checkpoint("extract", default="recompute") == "recompute"
    assert list(handle.foreach(items)) == items
    assert len(bfx_lines(caplog, "BFX_FINGERPRINT_MISMATCH")) == 2
    (resume,) = bfx_lines(caplog, "BFX_FOREACH_RESUME")
    assert "skipped=0 resumed_at=0" in resume
    # What this attempt writes is its own: a third attempt of v2 reuses it silently.
    handle.checkpoint("extract", {"v": 2})
    assert handle.get_checkpoint("extract") == {"v": 2}


def test_fingerprint_policy_fail_fails_the_task_saying_what_changed(store: CatalogStore) -> None:
    handle, items = changed_definition(store, VersionMismatchPolicy.FAIL)
    with pytest.raises(AirflowFailException, match=r"BFX_FINGERPRINT_MISMATCH.*v1 -> v2"):
        handle.get_checkpoint("extract")
    worked: list[str] = []
    with pytest.raises(AirflowFailException, match="version_mismatch_policy=FAIL"):
        for item in handle.foreach(items):
            worked.append(item)
    assert worked == []


def test_progress_rows_with_a_hand_edited_iteration_key_are_named(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    list(handle.foreach(["a"]))
    C = store.s.ExecutionCheckpoint
    with store.engine.begin() as conn:
        conn.execute(C.update().values(IterationKey="first"))
        assert conn.execute(select(C.c.IterationKey)).scalars().all() == ["first"]
    with pytest.raises(ValueError, match=r"IterationKey='first', which is not an iteration index"):
        list(handle.foreach(["a"], node=loops.FOREACH_NODE))
