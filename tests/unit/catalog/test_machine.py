"""Exhaustive tests of the pure state machine (``catalog/machine.py``, DESIGN.md §4).

Every case names the row of its decision table it must select and the exact outcome it must
produce; ``test_every_rule_is_selected`` fails when a row of a table is selected by no case, so a
row added to a table without a test is caught. Emitted tokens are compared with their full
``key=value`` context (order-insensitive), outcomes field by field.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from airflow_provider_bfx.catalog.codes import ExecutionStatus as St
from airflow_provider_bfx.catalog.codes import NextLoadStatus as Nls
from airflow_provider_bfx.catalog.codes import Token, VersionMismatchPolicy
from airflow_provider_bfx.catalog.machine import (
    BATCH_START_RULES,
    TASK_END_RULES,
    TASK_START_RULES,
    Abort,
    ActiveExecution,
    BatchEnd,
    BatchStart,
    BatchStartFacts,
    Emit,
    LandedCopy,
    Lineage,
    ParentExecution,
    PreviousBatch,
    PriorExecution,
    ResumeScope,
    Run,
    TaskEnd,
    TaskEndFacts,
    TaskOutcome,
    TaskStart,
    TaskStartFacts,
    batch_end,
    batch_reopen,
    batch_skips_all,
    batch_start,
    decide,
    expire,
    reconcile_previous,
    task_end,
    task_end_guard,
    task_start,
    task_start_guard,
)

NOW = datetime(2026, 3, 14, 2, 0, 0)
DAY1 = datetime(2026, 3, 13)
DAY2 = datetime(2026, 3, 14)
OLD_FP = "a" * 64
NEW_FP = "b" * 64

ACTIVE = (St.EXECUTING, St.RETRYING, St.COMPUTE_ONLY)
TERMINAL = (St.SUCCEEDED, St.FAILED, St.SKIPPED, St.ABORTED)

WARN, RERUN, FAIL = (
    VersionMismatchPolicy.WARN,
    VersionMismatchPolicy.RERUN,
    VersionMismatchPolicy.FAIL,
)


def emitted(emits: tuple[Emit, ...]) -> list[tuple[Token, dict[str, object]]]:
    """Tokens with their context as dicts: the order of the keys is not part of the contract."""
    return [(e.token, dict(e.context)) for e in emits]


def rule_index(rules: tuple[Any, ...], design: str) -> int:
    designs = [r.design for r in rules]
    return designs.index(design)


# ---------------------------------------------------------------------------------------------
# Batch start
# ---------------------------------------------------------------------------------------------


def previous(**kw: Any) -> PreviousBatch:
    values: dict[str, Any] = dict(
        execution_id=10,
        status=St.FAILED,
        next_load_status=Nls.RETRY,
        original_execution_id=7,
        attempt_number=1,
        lineage_started_at=NOW - timedelta(hours=1),
        logical_date=DAY1,
        has_live_task=False,
        has_failed_task=False,
    )
    values.update(kw)
    return PreviousBatch(**values)


def bfacts(**kw: Any) -> BatchStartFacts:
    values: dict[str, Any] = dict(
        now=NOW,
        package_enabled=True,
        previous=None,
        retry_limit=3,
        max_resume_age=None,
        full_rerun_requested=False,
        resume_scope=ResumeScope.LINEAGE,
        logical_date=DAY1,
    )
    values.update(kw)
    return BatchStartFacts(**values)


def fresh(reason: str, *emits: tuple[Token, dict[str, object]]) -> tuple[Any, ...]:
    return (St.EXECUTING, Nls.SKIP, Lineage.FRESH, reason, list(emits))


def resumed(
    original: int = 7, previous_id: int = 10, attempt: int = 2, parent: int | None = None
) -> tuple[Any, ...]:
    ctx: dict[str, object] = dict(
        original_execution_id=original, previous_execution_id=previous_id, attempt=attempt
    )
    if parent is not None:
        ctx["parent_execution_id"] = parent
    return (
        St.RETRYING,
        Nls.SKIP,
        Lineage.RESUME,
        "resuming the failed batch",
        [(Token.BATCH_RESUME, ctx)],
    )


DISABLED: tuple[Any, ...] = (
    St.SKIPPED,
    Nls.PENDING,
    Lineage.FRESH,
    "package disabled",
    [(Token.PACKAGE_DISABLED, {})],
)
RECONCILED_OK = (
    10,
    True,
    (
        Token.BATCH_RECONCILED,
        dict(batch_execution_id=10, status="S", next_load_status="P", reason="no live task"),
    ),
)
RECONCILED_FAILED = (
    10,
    False,
    (
        Token.BATCH_RECONCILED,
        dict(
            batch_execution_id=10,
            status="F",
            next_load_status="R",
            reason="no live task; a task failed or was aborted",
        ),
    ),
)
NO_RETRY = "no failed batch to resume"
NOT_THIS_PARENT = "nested: the failed batch was not triggered from this parent lineage"
# The triggering task's lineage (its OriginalExecutionID) in the failed run, and a retry of that
# task in the resumed parent run (same lineage), and a try of it in a fresh parent lineage.
PARENT_LINEAGE = 30
RESUMED_PARENT = ParentExecution(execution_id=41, lineage=PARENT_LINEAGE)
FRESH_PARENT = ParentExecution(execution_id=50, lineage=50)


@dataclass(frozen=True)
class BatchCase:
    id: str
    facts: BatchStartFacts
    rule: int
    expect: tuple[Any, ...]  # status, next load status, lineage, reason, emits
    reconcile: tuple[Any, ...] | None = None  # execution_id, succeeded, (token, context)


BATCH_CASES = [
    # Row 0: package disabled, whatever the previous batch says.
    BatchCase("disabled-no-previous", bfacts(package_enabled=False), 0, DISABLED),
    BatchCase(
        "disabled-previous-wants-resume",
        bfacts(package_enabled=False, previous=previous()),
        0,
        DISABLED,
    ),
    BatchCase(
        "disabled-previous-running",
        bfacts(package_enabled=False, previous=previous(status=St.EXECUTING, has_live_task=True)),
        0,
        DISABLED,
    ),
    BatchCase(
        "disabled-still-reconciles-crashed-previous",
        bfacts(
            package_enabled=False,
            previous=previous(status=St.EXECUTING, next_load_status=Nls.SKIP),
        ),
        0,
        DISABLED,
        RECONCILED_OK,
    ),
    # Row 1: a previous batch still open with a live task: concurrent, fresh lineage.
    *(
        BatchCase(
            f"concurrent-previous-{status.value}",
            bfacts(
                previous=previous(
                    status=status,
                    next_load_status=Nls.SKIP,
                    has_live_task=True,
                    has_failed_task=failed,
                )
            ),
            1,
            fresh(
                "previous batch still running",
                (Token.CONCURRENT_BATCH, dict(running_batch_execution_id=10)),
            ),
        )
        for status, failed in ((St.EXECUTING, False), (St.RETRYING, True))
    ),
    # Row 2: nothing asks for a retry.
    BatchCase("no-previous", bfacts(), 2, fresh(NO_RETRY)),
    BatchCase(
        "previous-succeeded",
        bfacts(previous=previous(status=St.SUCCEEDED, next_load_status=Nls.PENDING)),
        2,
        fresh(NO_RETRY),
    ),
    BatchCase(
        "previous-disabled",
        bfacts(previous=previous(status=St.SKIPPED, next_load_status=Nls.PENDING)),
        2,
        fresh(NO_RETRY),
    ),
    BatchCase(
        "previous-succeeded-full-rerun",
        bfacts(
            previous=previous(status=St.SUCCEEDED, next_load_status=Nls.PENDING),
            full_rerun_requested=True,
        ),
        2,
        fresh(NO_RETRY),
    ),
    BatchCase(
        "reconciled-open-previous-without-failed-child-then-fresh",
        bfacts(previous=previous(status=St.EXECUTING, next_load_status=Nls.SKIP)),
        2,
        fresh(NO_RETRY),
        RECONCILED_OK,
    ),
    BatchCase(
        "reconciled-open-retrying-previous-without-failed-child-then-fresh",
        bfacts(previous=previous(status=St.RETRYING, next_load_status=Nls.SKIP, attempt_number=2)),
        2,
        fresh(NO_RETRY),
        RECONCILED_OK,
    ),
    # Row 3: full rerun requested.
    BatchCase(
        "full-rerun",
        bfacts(previous=previous(), full_rerun_requested=True),
        3,
        fresh("full rerun requested"),
    ),
    BatchCase(
        "full-rerun-after-reconciling-a-failed-previous",
        bfacts(
            previous=previous(status=St.EXECUTING, next_load_status=Nls.SKIP, has_failed_task=True),
            full_rerun_requested=True,
        ),
        3,
        fresh("full rerun requested"),
        RECONCILED_FAILED,
    ),
    # Row 4: a nested batch resumes only a failed batch of its own parent-task lineage.
    BatchCase(
        "nested-fresh-parent-lineage",
        bfacts(parent=FRESH_PARENT, previous=previous(parent_lineage=PARENT_LINEAGE)),
        4,
        fresh(NOT_THIS_PARENT),
    ),
    BatchCase(
        "nested-previous-was-top-level",
        bfacts(parent=RESUMED_PARENT, previous=previous(parent_lineage=None)),
        4,
        fresh(NOT_THIS_PARENT),
    ),
    BatchCase(
        "nested-previous-from-another-parent-task",
        bfacts(parent=RESUMED_PARENT, previous=previous(parent_lineage=31)),
        4,
        fresh(NOT_THIS_PARENT),
    ),
    BatchCase(
        "nested-previous-reconciled-failed-other-parent",
        bfacts(
            parent=FRESH_PARENT,
            previous=previous(
                status=St.EXECUTING,
                next_load_status=Nls.SKIP,
                has_failed_task=True,
                parent_lineage=PARENT_LINEAGE,
            ),
        ),
        4,
        fresh(NOT_THIS_PARENT),
        RECONCILED_FAILED,
    ),
    # A nested batch is still bound by the rules before and after row 4.
    BatchCase("nested-no-previous", bfacts(parent=RESUMED_PARENT), 2, fresh(NO_RETRY)),
    BatchCase(
        "nested-previous-succeeded",
        bfacts(
            parent=RESUMED_PARENT,
            previous=previous(
                status=St.SUCCEEDED, next_load_status=Nls.PENDING, parent_lineage=PARENT_LINEAGE
            ),
        ),
        2,
        fresh(NO_RETRY),
    ),
    BatchCase(
        "nested-previous-running",
        bfacts(
            parent=RESUMED_PARENT,
            previous=previous(
                status=St.EXECUTING,
                next_load_status=Nls.SKIP,
                has_live_task=True,
                parent_lineage=PARENT_LINEAGE,
            ),
        ),
        1,
        fresh(
            "previous batch still running",
            (Token.CONCURRENT_BATCH, dict(running_batch_execution_id=10)),
        ),
    ),
    BatchCase(
        "nested-full-rerun",
        bfacts(
            parent=RESUMED_PARENT,
            previous=previous(parent_lineage=PARENT_LINEAGE),
            full_rerun_requested=True,
        ),
        3,
        fresh("full rerun requested"),
    ),
    BatchCase(
        "nested-same-parent-lineage-other-date-scope",
        bfacts(
            parent=RESUMED_PARENT,
            previous=previous(parent_lineage=PARENT_LINEAGE, logical_date=DAY1),
            resume_scope=ResumeScope.LOGICAL_DATE,
            logical_date=DAY2,
        ),
        5,
        fresh("resume_scope=logical_date and the logical date differs"),
    ),
    BatchCase(
        "nested-same-parent-lineage-retry-limit",
        bfacts(
            parent=RESUMED_PARENT,
            previous=previous(parent_lineage=PARENT_LINEAGE, attempt_number=3),
        ),
        6,
        fresh(
            "retry limit reached",
            (Token.RETRY_LIMIT_REACHED, dict(original_execution_id=7, attempts=3, retry_limit=3)),
        ),
    ),
    BatchCase(
        "nested-same-parent-lineage-resumes",
        bfacts(parent=RESUMED_PARENT, previous=previous(parent_lineage=PARENT_LINEAGE)),
        8,
        resumed(parent=41),
    ),
    BatchCase(
        "nested-reconciled-same-parent-lineage-resumes",
        bfacts(
            parent=RESUMED_PARENT,
            previous=previous(
                status=St.RETRYING,
                next_load_status=Nls.SKIP,
                has_failed_task=True,
                parent_lineage=PARENT_LINEAGE,
            ),
        ),
        8,
        resumed(parent=41),
        RECONCILED_FAILED,
    ),
    BatchCase(
        "top-level-run-resumes-a-failed-nested-batch",
        bfacts(previous=previous(parent_lineage=PARENT_LINEAGE)),
        8,
        resumed(),
    ),
    # Row 5: resume_scope = logical_date and another date.
    BatchCase(
        "logical-date-scope-other-date",
        bfacts(
            previous=previous(logical_date=DAY1),
            resume_scope=ResumeScope.LOGICAL_DATE,
            logical_date=DAY2,
        ),
        5,
        fresh("resume_scope=logical_date and the logical date differs"),
    ),
    BatchCase(
        "logical-date-scope-no-date",
        bfacts(
            previous=previous(logical_date=DAY1),
            resume_scope=ResumeScope.LOGICAL_DATE,
            logical_date=None,
        ),
        5,
        fresh("resume_scope=logical_date and the logical date differs"),
    ),
    BatchCase(
        "logical-date-scope-other-date-beats-retry-limit",
        bfacts(
            previous=previous(logical_date=DAY1, attempt_number=3),
            resume_scope=ResumeScope.LOGICAL_DATE,
            logical_date=DAY2,
        ),
        5,
        fresh("resume_scope=logical_date and the logical date differs"),
    ),
    # Row 6: retry limit reached (attempt_number >= retry_limit).
    *(
        BatchCase(
            f"retry-limit-reached-attempt-{attempt}",
            bfacts(previous=previous(attempt_number=attempt), retry_limit=3),
            6,
            fresh(
                "retry limit reached",
                (
                    Token.RETRY_LIMIT_REACHED,
                    dict(original_execution_id=7, attempts=attempt, retry_limit=3),
                ),
            ),
        )
        for attempt in (3, 4)
    ),
    BatchCase(
        "retry-limit-zero",
        bfacts(previous=previous(attempt_number=1), retry_limit=0),
        6,
        fresh(
            "retry limit reached",
            (Token.RETRY_LIMIT_REACHED, dict(original_execution_id=7, attempts=1, retry_limit=0)),
        ),
    ),
    BatchCase(
        "retry-limit-checked-before-max-resume-age",
        bfacts(
            previous=previous(attempt_number=3, lineage_started_at=NOW - timedelta(days=9)),
            max_resume_age=60,
        ),
        6,
        fresh(
            "retry limit reached",
            (Token.RETRY_LIMIT_REACHED, dict(original_execution_id=7, attempts=3, retry_limit=3)),
        ),
    ),
    # Row 7: lineage older than MaxResumeAge.
    BatchCase(
        "max-resume-age-expired",
        bfacts(
            previous=previous(lineage_started_at=NOW - timedelta(seconds=3601)),
            max_resume_age=3600,
        ),
        7,
        fresh(
            "lineage older than MaxResumeAge",
            (
                Token.RESUME_EXPIRED,
                dict(original_execution_id=7, age_seconds=3601, max_resume_age=3600),
            ),
        ),
    ),
    # Row 8: resume.
    BatchCase("resume", bfacts(previous=previous()), 8, resumed()),
    BatchCase(
        "resume-attempt-plus-one",
        bfacts(previous=previous(execution_id=31, original_execution_id=7, attempt_number=2)),
        8,
        resumed(original=7, previous_id=31, attempt=3),
    ),
    BatchCase(
        "resume-logical-date-scope-same-date",
        bfacts(
            previous=previous(logical_date=DAY1),
            resume_scope=ResumeScope.LOGICAL_DATE,
            logical_date=DAY1,
        ),
        8,
        resumed(),
    ),
    BatchCase(
        "resume-lineage-scope-other-date",
        bfacts(previous=previous(logical_date=DAY1), logical_date=DAY2),
        8,
        resumed(),
    ),
    BatchCase(
        "resume-within-max-resume-age",
        bfacts(
            previous=previous(lineage_started_at=NOW - timedelta(seconds=3599)),
            max_resume_age=3600,
        ),
        8,
        resumed(),
    ),
    BatchCase(
        "resume-no-max-resume-age-very-old-lineage",
        bfacts(previous=previous(lineage_started_at=NOW - timedelta(days=400))),
        8,
        resumed(),
    ),
    BatchCase(
        "resume-below-retry-limit",
        bfacts(previous=previous(attempt_number=2), retry_limit=3),
        8,
        resumed(attempt=3),
    ),
    BatchCase(
        "reconciled-open-previous-with-failed-child-then-resume",
        bfacts(
            previous=previous(status=St.EXECUTING, next_load_status=Nls.SKIP, has_failed_task=True)
        ),
        8,
        resumed(),
        RECONCILED_FAILED,
    ),
    BatchCase(
        "reconciled-open-previous-with-failed-child-then-retry-limit",
        bfacts(
            previous=previous(
                status=St.COMPUTE_ONLY,
                next_load_status=Nls.SKIP,
                has_failed_task=True,
                attempt_number=3,
            )
        ),
        6,
        fresh(
            "retry limit reached",
            (Token.RETRY_LIMIT_REACHED, dict(original_execution_id=7, attempts=3, retry_limit=3)),
        ),
        RECONCILED_FAILED,
    ),
]


@pytest.mark.parametrize("case", BATCH_CASES, ids=[c.id for c in BATCH_CASES])
def test_batch_start(case: BatchCase) -> None:
    decision = batch_start(case.facts)

    assert rule_index(BATCH_START_RULES, decision.rule) == case.rule
    status, nls, lineage, reason, emits = case.expect
    start = decision.start
    assert (start.status, start.next_load_status, start.lineage, start.reason) == (
        status,
        nls,
        lineage,
        reason,
    )
    assert emitted(start.emits) == emits
    assert decision.resumes is (lineage is Lineage.RESUME)
    if case.reconcile is None:
        assert decision.reconcile is None
        assert decision.previous == case.facts.previous
    else:
        execution_id, succeeded, emit = case.reconcile
        assert decision.reconcile is not None
        assert (decision.reconcile.execution_id, decision.reconcile.succeeded) == (
            execution_id,
            succeeded,
        )
        assert emitted((decision.reconcile.emit,)) == [emit]
        # The decision sees the previous batch as closed by the reconciliation.
        assert decision.previous is not None
        assert case.facts.previous is not None
        assert decision.previous.status is (St.SUCCEEDED if succeeded else St.FAILED)
        assert decision.previous.next_load_status is (Nls.PENDING if succeeded else Nls.RETRY)
        assert decision.previous.execution_id == case.facts.previous.execution_id


def test_reconcile_previous_none() -> None:
    assert reconcile_previous(None) == (None, None)


@pytest.mark.parametrize("status", TERMINAL, ids=str)
def test_reconcile_previous_leaves_a_closed_batch_alone(status: St) -> None:
    closed = previous(status=status, has_failed_task=True)
    assert reconcile_previous(closed) == (closed, None)


@pytest.mark.parametrize("status", ACTIVE, ids=str)
def test_reconcile_previous_leaves_a_batch_with_a_live_task_alone(status: St) -> None:
    running = previous(status=status, next_load_status=Nls.SKIP, has_live_task=True)
    assert reconcile_previous(running) == (running, None)


@pytest.mark.parametrize("failed", [False, True], ids=["no-failed-child", "failed-child"])
@pytest.mark.parametrize("status", ACTIVE, ids=str)
def test_reconcile_previous_closes_a_crashed_batch(status: St, failed: bool) -> None:
    crashed = previous(status=status, next_load_status=Nls.SKIP, has_failed_task=failed)
    closed, reconciliation = reconcile_previous(crashed)
    expected = RECONCILED_FAILED if failed else RECONCILED_OK
    assert closed == replace(
        crashed,
        status=St.FAILED if failed else St.SUCCEEDED,
        next_load_status=Nls.RETRY if failed else Nls.PENDING,
    )
    assert reconciliation is not None
    assert (reconciliation.execution_id, reconciliation.succeeded) == (10, not failed)
    assert emitted((reconciliation.emit,)) == [expected[2]]


# -- batch reopen (same run started again) -------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
@pytest.mark.parametrize("status", ACTIVE, ids=str)
def test_batch_reopen_active_batch_stands(status: St, enabled: bool) -> None:
    assert batch_reopen(status, enabled) is None


@pytest.mark.parametrize("status", TERMINAL, ids=str)
def test_batch_reopen_disabled_batch_stands(status: St) -> None:
    assert batch_reopen(status, False) is None


@pytest.mark.parametrize("status", TERMINAL, ids=str)
def test_batch_reopen_terminal_batch_reopens_as_retrying(status: St) -> None:
    assert batch_reopen(status, True) == BatchStart(
        St.RETRYING, Nls.SKIP, Lineage.RESUME, "same run started again"
    )


# ---------------------------------------------------------------------------------------------
# Task start
# ---------------------------------------------------------------------------------------------


def prior(**kw: Any) -> PriorExecution:
    values: dict[str, Any] = dict(
        execution_id=20,
        status=St.FAILED,
        next_load_status=Nls.RETRY,
        audit_id=15,
        original_execution_id=12,
        attempt_number=2,
        operator_fingerprint=OLD_FP,
    )
    values.update(kw)
    return PriorExecution(**values)


def active(**kw: Any) -> ActiveExecution:
    values: dict[str, Any] = dict(
        execution_id=30,
        lease_owner="worker-1:4242",
        lease_expires_at=NOW + timedelta(seconds=30),
        lease_live=True,
        has_copy_checkpoint=False,
        in_this_lineage=True,
        audit_id=25,
        original_execution_id=12,
        attempt_number=3,
        operator_fingerprint=OLD_FP,
    )
    values.update(kw)
    return ActiveExecution(**values)


def stale(**kw: Any) -> ActiveExecution:
    values: dict[str, Any] = dict(lease_live=False, lease_expires_at=NOW - timedelta(seconds=10))
    values.update(kw)
    return active(**values)


def tfacts(**kw: Any) -> TaskStartFacts:
    values: dict[str, Any] = dict(
        batch_skips_all=False,
        package_enabled=True,
        active=(),
        prior=None,
        operator_fingerprint=OLD_FP,
        policy=WARN,
        decides_shape=False,
    )
    values.update(kw)
    return TaskStartFacts(**values)


def lease_expired(execution_id: int, nls: Nls, ago: float | None = 10.0) -> Abort:
    return Abort(
        execution_id,
        nls,
        Emit.of(
            Token.LEASE_EXPIRED,
            execution_id=execution_id,
            lease_owner="worker-1:4242",
            expired_seconds_ago=ago,
            next_load_status=nls.value,
        ),
    )


def aborted_prior(a: ActiveExecution, nls: Nls) -> PriorExecution:
    return PriorExecution(
        execution_id=a.execution_id,
        status=St.ABORTED,
        next_load_status=nls,
        audit_id=a.audit_id,
        original_execution_id=a.original_execution_id,
        attempt_number=a.attempt_number,
        operator_fingerprint=a.operator_fingerprint,
    )


def mismatch(policy: VersionMismatchPolicy, prior_id: int = 20) -> tuple[Token, dict[str, object]]:
    return (
        Token.FINGERPRINT_MISMATCH,
        dict(
            policy=policy.value,
            recorded=OLD_FP[:12],
            current=NEW_FP[:12],
            prior_execution_id=prior_id,
        ),
    )


SKIPPED_DISABLED = TaskStart(Run.SKIP, St.SKIPPED, Nls.PENDING, "package disabled")
SKIP_COMPLETED = TaskStart(
    Run.SKIP, St.SKIPPED, Nls.SKIP, "already completed in this lineage", audit_from_prior=True
)
COMPUTE_ONLY = TaskStart(
    Run.RUN,
    St.COMPUTE_ONLY,
    Nls.SKIP,
    "copy step already landed; compute only",
    audit_from_prior=True,
)
RETRY = TaskStart(Run.RUN, St.RETRYING, Nls.SKIP, "previous execution failed")
EXECUTE = TaskStart(Run.RUN, St.EXECUTING, Nls.SKIP, "nothing to resume")
SHAPE = TaskStart(Run.RUN, St.EXECUTING, Nls.SKIP, "decides the shape of the run: runs again")
REFUSED_RUNNING = TaskStart(
    Run.REFUSE, St.ABORTED, Nls.PENDING, "another execution holds a live lease"
)
RERUN_ALL = TaskStart(
    Run.RUN,
    St.RETRYING,
    Nls.SKIP,
    "task definition changed: rerun in full (version_mismatch_policy=RERUN)",
    discard_checkpoints=True,
)


def refused_fail(nls: Nls) -> TaskStart:
    return TaskStart(
        Run.REFUSE,
        St.ABORTED,
        nls,
        "task definition changed (version_mismatch_policy=FAIL)",
        audit_from_prior=True,
    )


def disabled_emit() -> tuple[Token, dict[str, object]]:
    return (Token.PACKAGE_DISABLED, {})


def skip_emit(p: PriorExecution) -> tuple[Token, dict[str, object]]:
    return (
        Token.SKIP_COMPLETED,
        dict(original_execution_id=p.original_execution_id, prior_execution_id=p.execution_id),
    )


def compute_emit(p: PriorExecution, audit_id: int | None = None) -> tuple[Token, dict[str, object]]:
    return (
        Token.COMPUTE_ONLY_RESTART,
        dict(
            audit_id=p.audit_id if audit_id is None else audit_id,
            prior_execution_id=p.execution_id,
            original_execution_id=p.original_execution_id,
        ),
    )


def retry_emit(p: PriorExecution) -> tuple[Token, dict[str, object]]:
    return (
        Token.RETRY,
        dict(prior_execution_id=p.execution_id, original_execution_id=p.original_execution_id),
    )


def running_emit(a: ActiveExecution) -> tuple[Token, dict[str, object]]:
    assert a.lease_expires_at is not None
    return (
        Token.ALREADY_RUNNING,
        dict(
            running_execution_id=a.execution_id,
            lease_owner=a.lease_owner,
            lease_expires_at=a.lease_expires_at.isoformat(),
        ),
    )


@dataclass(frozen=True)
class TaskCase:
    id: str
    facts: TaskStartFacts
    rule: int
    start: TaskStart  # without emits and failure_message: they are compared separately
    emits: list[tuple[Token, dict[str, object]]]
    aborts: tuple[Abort, ...] = ()
    prior: PriorExecution | None = None  # the prior the decision reports (after aborts)
    prior_is_facts: bool = True  # True: the decision's prior is the facts' prior, unchanged
    failure_message: tuple[str, ...] = ()  # fragments the failure message must contain
    # (AuditID, fingerprint) of the reused state; None: the decision prior's, when the start
    # reuses state (audit_from_prior), else (None, None).
    reused: tuple[int | None, str | None] | None = None


P_C = prior(status=St.SUCCEEDED, next_load_status=Nls.SKIP)
P_SKIPPED_C = prior(status=St.SKIPPED, next_load_status=Nls.SKIP)
P_D = prior(status=St.FAILED, next_load_status=Nls.COMPUTE_ONLY)
P_R = prior(status=St.FAILED, next_load_status=Nls.RETRY)
P_P = prior(status=St.SUCCEEDED, next_load_status=Nls.PENDING)
P_A_D = prior(status=St.ABORTED, next_load_status=Nls.COMPUTE_ONLY)
P_A_R = prior(status=St.ABORTED, next_load_status=Nls.RETRY)
P_DISABLED = prior(status=St.SKIPPED, next_load_status=Nls.PENDING)

LANDED = LandedCopy(execution_id=11, audit_id=11, operator_fingerprint=OLD_FP)
STALE_COPY = stale(has_copy_checkpoint=True)
STALE_NO_COPY = stale()
STALE_OTHER_LINEAGE = stale(execution_id=40, in_this_lineage=False, has_copy_checkpoint=True)
STALE_OLDER = stale(execution_id=5)
STALE_31 = stale(execution_id=31)
LIVE = active()
LIVE_OTHER_LINEAGE = active(execution_id=41, in_this_lineage=False)

TASK_CASES = [
    # Step 1 (row 0): package disabled, or the batch skips everything.
    TaskCase("disabled", tfacts(package_enabled=False), 0, SKIPPED_DISABLED, [disabled_emit()]),
    TaskCase(
        "batch-skips-all", tfacts(batch_skips_all=True), 0, SKIPPED_DISABLED, [disabled_emit()]
    ),
    TaskCase(
        "disabled-beats-completed-prior",
        tfacts(package_enabled=False, prior=P_C),
        0,
        SKIPPED_DISABLED,
        [disabled_emit()],
    ),
    TaskCase(
        "disabled-aborts-no-stale-execution",
        tfacts(package_enabled=False, active=(STALE_COPY,), prior=P_R),
        0,
        SKIPPED_DISABLED,
        [disabled_emit()],
    ),
    TaskCase(
        "batch-skips-all-aborts-no-stale-execution",
        tfacts(batch_skips_all=True, active=(STALE_NO_COPY,)),
        0,
        SKIPPED_DISABLED,
        [disabled_emit()],
    ),
    TaskCase(
        "disabled-no-fingerprint-check",
        tfacts(package_enabled=False, prior=P_D, operator_fingerprint=NEW_FP, policy=FAIL),
        0,
        SKIPPED_DISABLED,
        [disabled_emit()],
    ),
    # Step 2 (row 1): a live lease refuses the start and aborts nothing.
    TaskCase(
        "live-lease-refuses",
        tfacts(active=(LIVE,)),
        1,
        REFUSED_RUNNING,
        [running_emit(LIVE)],
        failure_message=(
            "[BFX_ALREADY_RUNNING]",
            "execution 30",
            "worker-1:4242",
            str(LIVE.lease_expires_at),
        ),
    ),
    TaskCase(
        "live-lease-other-lineage-refuses",
        tfacts(active=(LIVE_OTHER_LINEAGE,), prior=P_C),
        1,
        REFUSED_RUNNING,
        [running_emit(LIVE_OTHER_LINEAGE)],
        failure_message=("[BFX_ALREADY_RUNNING]", "execution 41"),
    ),
    TaskCase(
        "live-lease-with-a-stale-one-aborts-nothing",
        tfacts(active=(STALE_COPY, LIVE_OTHER_LINEAGE), prior=P_D),
        1,
        REFUSED_RUNNING,
        [running_emit(LIVE_OTHER_LINEAGE)],
        failure_message=("[BFX_ALREADY_RUNNING]", "execution 41"),
    ),
    TaskCase(
        "live-lease-no-fingerprint-check",
        tfacts(active=(LIVE,), prior=P_D, operator_fingerprint=NEW_FP, policy=FAIL),
        1,
        REFUSED_RUNNING,
        [running_emit(LIVE)],
        failure_message=("[BFX_ALREADY_RUNNING]",),
    ),
    # Step 3, C (row 2): skip as completed.
    TaskCase("prior-completed-skips", tfacts(prior=P_C), 2, SKIP_COMPLETED, [skip_emit(P_C)]),
    TaskCase(
        "prior-skipped-as-completed-skips",
        tfacts(prior=P_SKIPPED_C),
        2,
        SKIP_COMPLETED,
        [skip_emit(P_SKIPPED_C)],
    ),
    TaskCase(
        "prior-completed-same-fingerprint-no-mismatch",
        tfacts(prior=P_C, policy=FAIL),
        2,
        SKIP_COMPLETED,
        [skip_emit(P_C)],
    ),
    TaskCase(
        "prior-completed-warn-mismatch",
        tfacts(prior=P_C, operator_fingerprint=NEW_FP, policy=WARN),
        2,
        SKIP_COMPLETED,
        [skip_emit(P_C), mismatch(WARN)],
    ),
    TaskCase(
        "prior-completed-rerun-mismatch",
        tfacts(prior=P_C, operator_fingerprint=NEW_FP, policy=RERUN),
        2,
        RERUN_ALL,
        [mismatch(RERUN)],
    ),
    TaskCase(
        "prior-completed-fail-mismatch",
        tfacts(prior=P_C, operator_fingerprint=NEW_FP, policy=FAIL),
        2,
        refused_fail(Nls.SKIP),
        [mismatch(FAIL)],
        failure_message=(
            "[BFX_FINGERPRINT_MISMATCH]",
            "execution 20",
            f"{OLD_FP[:12]} -> {NEW_FP[:12]}",
            "version_mismatch_policy=FAIL",
        ),
    ),
    TaskCase(
        "prior-completed-recorded-fingerprint-unknown",
        tfacts(prior=replace(P_C, operator_fingerprint=None), operator_fingerprint=NEW_FP),
        2,
        SKIP_COMPLETED,
        [skip_emit(P_C)],
    ),
    TaskCase(
        "prior-completed-current-fingerprint-unknown",
        tfacts(prior=P_C, operator_fingerprint=None, policy=FAIL),
        2,
        SKIP_COMPLETED,
        [skip_emit(P_C)],
    ),
    # Step 3, D (row 3): compute-only restart, AuditID from the prior.
    TaskCase("prior-compute-only", tfacts(prior=P_D), 3, COMPUTE_ONLY, [compute_emit(P_D)]),
    TaskCase(
        "prior-aborted-compute-only",
        tfacts(prior=P_A_D),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_A_D)],
    ),
    TaskCase(
        "prior-compute-only-shape-operator-still-restarts-compute",
        tfacts(prior=P_D, decides_shape=True),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D)],
    ),
    TaskCase(
        "prior-compute-only-warn-mismatch",
        tfacts(prior=P_D, operator_fingerprint=NEW_FP, policy=WARN),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D), mismatch(WARN)],
    ),
    TaskCase(
        "prior-compute-only-rerun-mismatch",
        tfacts(prior=P_D, operator_fingerprint=NEW_FP, policy=RERUN),
        3,
        RERUN_ALL,
        [mismatch(RERUN)],
    ),
    TaskCase(
        "prior-compute-only-fail-mismatch",
        tfacts(prior=P_D, operator_fingerprint=NEW_FP, policy=FAIL),
        3,
        refused_fail(Nls.COMPUTE_ONLY),
        [mismatch(FAIL)],
        failure_message=(
            "[BFX_FINGERPRINT_MISMATCH]",
            "execution 20",
            f"{OLD_FP[:12]} -> {NEW_FP[:12]}",
            "version_mismatch_policy=FAIL",
            "bfx reset",
        ),
    ),
    TaskCase(
        "prior-compute-only-same-fingerprint-fail-policy",
        tfacts(prior=P_D, policy=FAIL),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D)],
    ),
    # Expired lease (step 2) with the copy landed: aborted as D, and it becomes the prior.
    TaskCase(
        "stale-with-copy-aborts-D-and-restarts-compute",
        tfacts(active=(STALE_COPY,)),
        3,
        COMPUTE_ONLY,
        [compute_emit(aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY))],
        aborts=(lease_expired(30, Nls.COMPUTE_ONLY),),
        prior=aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY),
        prior_is_facts=False,
    ),
    TaskCase(
        "stale-with-copy-newer-than-prior-decides",
        tfacts(active=(STALE_COPY,), prior=P_C),
        3,
        COMPUTE_ONLY,
        [compute_emit(aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY))],
        aborts=(lease_expired(30, Nls.COMPUTE_ONLY),),
        prior=aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY),
        prior_is_facts=False,
    ),
    TaskCase(
        "stale-with-copy-fingerprint-mismatch-against-aborted-row",
        tfacts(active=(STALE_COPY,), operator_fingerprint=NEW_FP, policy=WARN),
        3,
        COMPUTE_ONLY,
        [compute_emit(aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY)), mismatch(WARN, 30)],
        aborts=(lease_expired(30, Nls.COMPUTE_ONLY),),
        prior=aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY),
        prior_is_facts=False,
    ),
    TaskCase(
        "stale-other-lineage-aborted-but-prior-decides",
        tfacts(active=(STALE_OTHER_LINEAGE,), prior=P_D),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D)],
        aborts=(lease_expired(40, Nls.COMPUTE_ONLY),),
    ),
    # Step 3, R (row 4).
    TaskCase("prior-retry", tfacts(prior=P_R), 4, RETRY, [retry_emit(P_R)]),
    TaskCase("prior-aborted-retry", tfacts(prior=P_A_R), 4, RETRY, [retry_emit(P_A_R)]),
    TaskCase(
        "prior-retry-no-fingerprint-check",
        tfacts(prior=P_R, operator_fingerprint=NEW_FP, policy=FAIL),
        4,
        RETRY,
        [retry_emit(P_R)],
    ),
    TaskCase(
        "stale-without-copy-aborts-R-and-retries",
        tfacts(active=(STALE_NO_COPY,)),
        4,
        RETRY,
        [retry_emit(aborted_prior(STALE_NO_COPY, Nls.RETRY))],
        aborts=(lease_expired(30, Nls.RETRY),),
        prior=aborted_prior(STALE_NO_COPY, Nls.RETRY),
        prior_is_facts=False,
    ),
    TaskCase(
        "stale-without-copy-newer-than-compute-only-prior-decides",
        tfacts(active=(STALE_NO_COPY,), prior=P_D),
        4,
        RETRY,
        [retry_emit(aborted_prior(STALE_NO_COPY, Nls.RETRY))],
        aborts=(lease_expired(30, Nls.RETRY),),
        prior=aborted_prior(STALE_NO_COPY, Nls.RETRY),
        prior_is_facts=False,
    ),
    TaskCase(
        "stale-older-than-prior-does-not-decide",
        tfacts(active=(STALE_OLDER,), prior=P_R),
        4,
        RETRY,
        [retry_emit(P_R)],
        aborts=(lease_expired(5, Nls.RETRY),),
    ),
    TaskCase(
        "two-stale-in-lineage-newest-decides",
        tfacts(active=(STALE_COPY, STALE_31), prior=P_C),
        4,
        RETRY,
        [retry_emit(aborted_prior(STALE_31, Nls.RETRY))],
        aborts=(lease_expired(30, Nls.COMPUTE_ONLY), lease_expired(31, Nls.RETRY)),
        prior=aborted_prior(STALE_31, Nls.RETRY),
        prior_is_facts=False,
    ),
    TaskCase(
        "stale-without-lease-time",
        tfacts(active=(stale(lease_expires_at=None),)),
        4,
        RETRY,
        [retry_emit(aborted_prior(stale(lease_expires_at=None), Nls.RETRY))],
        aborts=(lease_expired(30, Nls.RETRY, ago=None),),
        prior=aborted_prior(stale(lease_expires_at=None), Nls.RETRY),
        prior_is_facts=False,
    ),
    # Step 3, none / P (row 5): execute.
    TaskCase("no-prior", tfacts(), 5, EXECUTE, []),
    TaskCase("prior-pending", tfacts(prior=P_P), 5, EXECUTE, []),
    TaskCase("prior-disabled-pending", tfacts(prior=P_DISABLED), 5, EXECUTE, []),
    TaskCase(
        "no-fingerprint-check-without-reused-state",
        tfacts(prior=P_P, operator_fingerprint=NEW_FP, policy=FAIL),
        5,
        EXECUTE,
        [],
    ),
    TaskCase(
        "stale-other-lineage-aborted-then-execute",
        tfacts(active=(STALE_OTHER_LINEAGE,)),
        5,
        EXECUTE,
        [],
        aborts=(lease_expired(40, Nls.COMPUTE_ONLY),),
    ),
    TaskCase(
        "shape-operator-runs-again-after-completion",
        tfacts(prior=P_C, decides_shape=True),
        5,
        SHAPE,
        [],
    ),
    # The landed copy decides what a compute-only restart reuses: its writer's AuditID and the
    # definition that landed it, whatever executions came in between.
    TaskCase(
        "compute-only-reuses-the-landed-audit",
        tfacts(prior=P_D, landed=LANDED),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D, audit_id=11)],
        reused=(11, OLD_FP),
    ),
    TaskCase(
        "compute-only-landed-audit-unknown-falls-back-to-prior",
        tfacts(prior=P_D, landed=replace(LANDED, audit_id=None)),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D)],
        reused=(15, OLD_FP),
    ),
    TaskCase(
        "compute-only-fingerprint-checked-against-the-landed-copy-warn",
        tfacts(
            prior=replace(P_D, operator_fingerprint=NEW_FP),
            landed=LANDED,
            operator_fingerprint=NEW_FP,
        ),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D, audit_id=11), mismatch(WARN)],
        reused=(11, OLD_FP),
    ),
    TaskCase(
        "compute-only-fingerprint-checked-against-the-landed-copy-fail",
        tfacts(
            prior=replace(P_D, operator_fingerprint=NEW_FP),
            landed=LANDED,
            operator_fingerprint=NEW_FP,
            policy=FAIL,
        ),
        3,
        refused_fail(Nls.COMPUTE_ONLY),
        [mismatch(FAIL)],
        failure_message=(f"{OLD_FP[:12]} -> {NEW_FP[:12]}", "execution 20"),
        reused=(11, OLD_FP),
    ),
    TaskCase(
        "compute-only-landed-fingerprint-unknown-falls-back-to-prior",
        tfacts(prior=P_D, landed=replace(LANDED, operator_fingerprint=None), policy=FAIL),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D, audit_id=11)],
        reused=(11, OLD_FP),
    ),
    TaskCase(
        "compute-only-landed-same-fingerprint-no-mismatch",
        tfacts(
            prior=replace(P_D, operator_fingerprint=NEW_FP),
            landed=replace(LANDED, operator_fingerprint=NEW_FP),
            operator_fingerprint=NEW_FP,
            policy=FAIL,
        ),
        3,
        COMPUTE_ONLY,
        [compute_emit(P_D, audit_id=11)],
        reused=(11, NEW_FP),
    ),
    TaskCase(
        "stale-with-copy-reuses-the-landed-audit",
        tfacts(active=(STALE_COPY,), landed=LANDED),
        3,
        COMPUTE_ONLY,
        [compute_emit(aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY), audit_id=11)],
        aborts=(lease_expired(30, Nls.COMPUTE_ONLY),),
        prior=aborted_prior(STALE_COPY, Nls.COMPUTE_ONLY),
        prior_is_facts=False,
        reused=(11, OLD_FP),
    ),
    TaskCase(
        "skip-ignores-the-landed-copy",
        tfacts(prior=P_C, landed=replace(LANDED, operator_fingerprint=NEW_FP)),
        2,
        SKIP_COMPLETED,
        [skip_emit(P_C)],
        reused=(15, OLD_FP),
    ),
    TaskCase(
        "retry-ignores-the-landed-copy",
        tfacts(prior=P_R, landed=LANDED, operator_fingerprint=NEW_FP, policy=FAIL),
        4,
        RETRY,
        [retry_emit(P_R)],
    ),
    TaskCase(
        "execute-ignores-the-landed-copy",
        tfacts(landed=LANDED),
        5,
        EXECUTE,
        [],
    ),
    TaskCase(
        "shape-operator-no-fingerprint-check",
        tfacts(prior=P_C, decides_shape=True, operator_fingerprint=NEW_FP, policy=FAIL),
        5,
        SHAPE,
        [],
    ),
]


@pytest.mark.parametrize("case", TASK_CASES, ids=[c.id for c in TASK_CASES])
def test_task_start(case: TaskCase) -> None:
    decision = task_start(case.facts, NOW)

    assert rule_index(TASK_START_RULES, decision.rule) == case.rule
    assert replace(decision.start, emits=(), failure_message=None) == case.start
    assert emitted(decision.start.emits) == case.emits
    assert decision.aborts == case.aborts
    expected_prior = case.facts.prior if case.prior_is_facts else case.prior
    assert decision.prior == expected_prior
    reused = case.reused
    if reused is None:
        reused = (None, None)
        if case.start.audit_from_prior:
            assert expected_prior is not None
            reused = (expected_prior.audit_id, expected_prior.operator_fingerprint)
    assert (decision.reused_audit_id, decision.reused_fingerprint) == reused
    if case.failure_message:
        message = decision.start.failure_message
        assert message is not None
        for fragment in case.failure_message:
            assert fragment in message
    else:
        assert decision.start.failure_message is None
    # Run and status agree: a refused start is A, a skipped one C, a running one active.
    run = decision.start.run
    assert (run is Run.REFUSE) == (decision.start.status is St.ABORTED)
    assert (run is Run.SKIP) == (decision.start.status is St.SKIPPED)
    assert (run is Run.RUN) == decision.start.status.is_active
    if decision.start.status.is_active:
        # "An active row carries C (a concurrent start must not run it twice)."
        assert decision.start.next_load_status is Nls.SKIP


def test_refused_start_names_the_running_execution_and_its_lease() -> None:
    expires = datetime(2026, 3, 14, 2, 0, 30)
    decision = task_start(tfacts(active=(active(lease_expires_at=expires),)), NOW)
    assert decision.start.failure_message == (
        "[BFX_ALREADY_RUNNING] execution 30 of this task is still running (lease owner"
        f" worker-1:4242, expires {expires}); refusing to run it twice. Wait for it, or let its"
        " lease expire and run `bfx recover`."
    )


def test_fail_policy_message_says_what_changed() -> None:
    decision = task_start(tfacts(prior=P_D, operator_fingerprint=NEW_FP, policy=FAIL), NOW)
    assert decision.start.failure_message == (
        "[BFX_FINGERPRINT_MISMATCH] the task's definition changed since execution 20 recorded"
        f" the state this run would reuse (operator fingerprint {OLD_FP[:12]} ->"
        f" {NEW_FP[:12]}) and version_mismatch_policy=FAIL. Revert the change, set the policy to"
        " WARN or RERUN, or run `bfx reset DAG_ID --task TASK_ID` to start this task fresh."
    )


@pytest.mark.parametrize("copy", [True, False], ids=["copy-landed", "no-copy"])
def test_expire(copy: bool) -> None:
    nls = Nls.COMPUTE_ONLY if copy else Nls.RETRY
    a = stale(has_copy_checkpoint=copy, lease_expires_at=NOW - timedelta(seconds=90.04))
    abort = expire(a, NOW)
    assert (abort.execution_id, abort.next_load_status) == (30, nls)
    assert emitted((abort.emit,)) == [
        (
            Token.LEASE_EXPIRED,
            dict(
                execution_id=30,
                lease_owner="worker-1:4242",
                expired_seconds_ago=90.0,
                next_load_status=nls.value,
            ),
        )
    ]


# ---------------------------------------------------------------------------------------------
# Task end and batch end
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndCase:
    id: str
    facts: TaskEndFacts
    rule: int
    expect: TaskEnd


def efacts(outcome: TaskOutcome, **kw: Any) -> TaskEndFacts:
    values: dict[str, Any] = dict(
        outcome=outcome,
        current_status=St.EXECUTING,
        batch_status=St.EXECUTING,
        has_copy_checkpoint=False,
    )
    values.update(kw)
    return TaskEndFacts(**values)


OK, TRY, FINAL, LOGIC = (
    TaskOutcome.SUCCESS,
    TaskOutcome.FAILED_TRY,
    TaskOutcome.FINAL_FAILURE,
    TaskOutcome.SKIPPED_BY_LOGIC,
)

END_CASES = [
    # Row 0: success, C when the batch already failed.
    EndCase(
        "success-batch-failed",
        efacts(OK, batch_status=St.FAILED),
        0,
        TaskEnd(St.SUCCEEDED, Nls.SKIP),
    ),
    *(
        EndCase(
            f"success-batch-{b.value}",
            efacts(OK, batch_status=b),
            0,
            TaskEnd(St.SUCCEEDED, Nls.PENDING),
        )
        for b in (St.EXECUTING, St.RETRYING, St.SUCCEEDED)
    ),
    EndCase(
        "success-compute-only-with-copy",
        efacts(OK, current_status=St.COMPUTE_ONLY, has_copy_checkpoint=True),
        0,
        TaskEnd(St.SUCCEEDED, Nls.PENDING),
    ),
    # Row 1: one try failed.
    EndCase(
        "failed-try-copy-landed",
        efacts(TRY, has_copy_checkpoint=True),
        1,
        TaskEnd(St.FAILED, Nls.COMPUTE_ONLY, record_error=True),
    ),
    EndCase(
        "failed-try-no-copy",
        efacts(TRY, current_status=St.RETRYING),
        1,
        TaskEnd(St.FAILED, Nls.RETRY, record_error=True),
    ),
    EndCase(
        "failed-try-batch-already-failed",
        efacts(TRY, batch_status=St.FAILED, current_status=St.COMPUTE_ONLY),
        1,
        TaskEnd(St.FAILED, Nls.RETRY, record_error=True),
    ),
    # Row 2: final failure fails the batch.
    EndCase(
        "final-failure-copy-landed",
        efacts(FINAL, has_copy_checkpoint=True, current_status=St.COMPUTE_ONLY),
        2,
        TaskEnd(St.FAILED, Nls.COMPUTE_ONLY, record_error=True, fail_batch=True),
    ),
    EndCase(
        "final-failure-no-copy",
        efacts(FINAL),
        2,
        TaskEnd(St.FAILED, Nls.RETRY, record_error=True, fail_batch=True),
    ),
    # Row 3: a skip raised by the task's own logic.
    EndCase("skipped-by-logic", efacts(LOGIC), 3, TaskEnd(St.SKIPPED, Nls.PENDING)),
    EndCase(
        "skipped-by-logic-batch-failed-copy-landed",
        efacts(LOGIC, batch_status=St.FAILED, has_copy_checkpoint=True),
        3,
        TaskEnd(St.SKIPPED, Nls.PENDING),
    ),
]


@pytest.mark.parametrize("case", END_CASES, ids=[c.id for c in END_CASES])
def test_task_end(case: EndCase) -> None:
    rule, _ = decide(TASK_END_RULES, case.facts)
    assert TASK_END_RULES.index(rule) == case.rule
    assert task_end(case.facts) == case.expect


@pytest.mark.parametrize("outcome", list(TaskOutcome), ids=str)
@pytest.mark.parametrize("status", TERMINAL, ids=str)
def test_task_end_of_a_row_no_longer_active_changes_nothing(
    status: St, outcome: TaskOutcome
) -> None:
    facts = efacts(outcome, current_status=status, batch_status=St.FAILED, has_copy_checkpoint=True)
    assert task_end(facts) is None


@pytest.mark.parametrize("outcome", list(TaskOutcome), ids=str)
@pytest.mark.parametrize("status", ACTIVE, ids=str)
def test_task_end_of_an_active_row_is_terminal(status: St, outcome: TaskOutcome) -> None:
    end = task_end(efacts(outcome, current_status=status))
    assert end is not None
    assert end.status.is_terminal


def test_task_end_facts_are_the_four_a_guard_ranges_over() -> None:
    """:func:`task_end_guard` evaluates the table over every row status, batch status and copy
    flag for one outcome: a new fact of a task end must be ranged over too (decision 0120)."""
    assert [f.name for f in dataclasses.fields(TaskEndFacts)] == [
        "outcome",
        "current_status",
        "batch_status",
        "has_copy_checkpoint",
    ]


@pytest.mark.parametrize("outcome", list(TaskOutcome), ids=str)
def test_a_guard_is_the_tables_own_answer_over_its_statuses(outcome: TaskOutcome) -> None:
    """Exhaustively: inside the guard every combination of facts decides the guard's end;
    every status left out would decide something else for some combination (the guard is the
    largest such set around a running row of a running batch); no guard where the expected
    end writes more than the row (an error row, the batch's failure)."""
    guard = task_end_guard(outcome)
    expected = task_end(efacts(outcome, current_status=St.EXECUTING, batch_status=St.EXECUTING))
    if guard is None:
        assert outcome in (TaskOutcome.FAILED_TRY, TaskOutcome.FINAL_FAILURE)
        assert expected is not None and expected.record_error
        return
    assert guard.end == expected
    assert not guard.end.record_error and not guard.end.fail_batch
    for current, batch, landed in itertools.product(guard.current, guard.batch, (False, True)):
        facts = efacts(
            outcome, current_status=current, batch_status=batch, has_copy_checkpoint=landed
        )
        assert task_end(facts) == guard.end, facts
    for batch in set(St) - guard.batch:
        assert task_end(efacts(outcome, batch_status=batch)) != guard.end
    for current in set(St) - guard.current:
        assert task_end(efacts(outcome, current_status=current)) != guard.end


def test_a_successs_guard_leaves_out_a_failed_batch_and_an_ended_row() -> None:
    """What the guard means for a success, spelled out: a row still active, in a batch not
    failed (a failed batch makes its NextLoadStatus C)."""
    guard = task_end_guard(TaskOutcome.SUCCESS)
    assert guard is not None
    assert guard.end == TaskEnd(St.SUCCEEDED, Nls.PENDING)
    assert guard.current == frozenset(ACTIVE)
    assert guard.batch == frozenset(St) - {St.FAILED}


def test_task_start_facts_are_those_a_start_guard_ranges_over() -> None:
    """:func:`task_start_guard` fixes the facts a guarded start checks in SQL (no prior, no
    landed copy, nothing active, the package enabled, the batch's status) and ranges over the
    rest (fingerprint, policy, shape flag): a new fact of a task start must be placed in one
    of the two (decision 0121)."""
    assert [f.name for f in dataclasses.fields(TaskStartFacts)] == [
        "batch_skips_all",
        "package_enabled",
        "active",
        "prior",
        "operator_fingerprint",
        "policy",
        "decides_shape",
        "landed",
    ]


def _first_start(batch: St, **kw: Any) -> TaskStartFacts:
    """A first start in its lineage (nothing in ``tfacts``' defaults to reuse) in a batch of
    status ``batch``."""
    return tfacts(
        **{"batch_skips_all": batch_skips_all(batch), "operator_fingerprint": NEW_FP, **kw}
    )


def test_a_start_guard_is_the_tables_own_answer_over_its_statuses() -> None:
    """Exhaustively: for a task with nothing in its lineage, in a not-closed batch of any
    status in the guard, every fingerprint, policy, shape flag and DAG-package flag decides the
    guard's start, aborts nothing and reopens nothing; a status left out decides otherwise or
    reopens the batch (decision 0121). The guard's start is a plain run: ``E``/``C``, its own
    audit id, no token."""
    guard = task_start_guard()
    assert guard is not None
    start = guard.decision.start
    assert (start.run, start.status, start.next_load_status) == (
        Run.RUN,
        St.EXECUTING,
        Nls.SKIP,
    )
    assert not start.audit_from_prior and not start.emits and not start.discard_checkpoints
    assert guard.decision.prior is None and guard.decision.aborts == ()
    assert guard.decision.reused_audit_id is None and guard.decision.reused_fingerprint is None
    ranges = itertools.product(
        guard.batch, VersionMismatchPolicy, (False, True), (None, OLD_FP), (False, True)
    )
    for batch, policy, shape, fingerprint, dag_enabled in ranges:
        facts = _first_start(
            batch, policy=policy, decides_shape=shape, operator_fingerprint=fingerprint
        )
        assert task_start(facts, NOW) == guard.decision, facts
        assert batch_reopen(batch, dag_enabled, closed=False) is None
    for batch in set(St) - guard.batch:
        assert task_start(_first_start(batch), NOW) != guard.decision


def test_a_start_guard_covers_no_start_with_anything_in_its_lineage() -> None:
    """What the guard leaves to the full path, spelled out: each fact it checks in SQL, made
    true, decides another start (so the guarded INSERT must not match it)."""
    guard = task_start_guard()
    assert guard is not None
    assert guard.batch == frozenset(St) - {St.SKIPPED}
    prior = PriorExecution(7, St.SUCCEEDED, Nls.SKIP, 7, 7, 1, OLD_FP)
    live = ActiveExecution(9, "h:1", NOW + timedelta(seconds=60), True, False, False, 9, 9, 1, None)
    other = {
        "a prior that completed": _first_start(St.EXECUTING, prior=prior),
        "a prior that failed": _first_start(
            St.EXECUTING, prior=replace(prior, status=St.FAILED, next_load_status=Nls.RETRY)
        ),
        "a live try elsewhere": _first_start(St.EXECUTING, active=(live,)),
        "a stale try": _first_start(St.EXECUTING, active=(replace(live, lease_live=False),)),
        "the package disabled": _first_start(St.EXECUTING, package_enabled=False),
    }
    for name, facts in other.items():
        assert task_start(facts, NOW) != guard.decision, name


def test_batch_end_success_resets_the_lineage() -> None:
    assert batch_end(True) == BatchEnd(
        St.SUCCEEDED, Nls.PENDING, reset_lineage=True, stamp_completed=False
    )


def test_batch_end_failure_stamps_completed_siblings() -> None:
    assert batch_end(False) == BatchEnd(
        St.FAILED, Nls.RETRY, reset_lineage=False, stamp_completed=True
    )


# ---------------------------------------------------------------------------------------------
# Meta: every row of every table is selected by some case
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "cases"),
    [
        pytest.param(BATCH_START_RULES, BATCH_CASES, id="batch-start"),
        pytest.param(TASK_START_RULES, TASK_CASES, id="task-start"),
        pytest.param(TASK_END_RULES, END_CASES, id="task-end"),
    ],
)
def test_every_rule_is_selected(rules: tuple[Any, ...], cases: list[Any]) -> None:
    assert len({r.design for r in rules}) == len(rules), "rule designs must be unique"
    selected = {c.rule for c in cases}
    missing = sorted(set(range(len(rules))) - selected)
    assert not missing, f"rows never selected by a case: {[rules[i].design for i in missing]}"
    assert selected <= set(range(len(rules)))
    assert len({c.id for c in cases}) == len(cases), "case ids must be unique"
