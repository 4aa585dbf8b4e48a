"""The restart-and-recovery state machine: every transition of DESIGN.md §4, as data, with no I/O.

Each transition is a function from *facts* (what the store read, inside the transaction that
holds the batch row lock) to a *decision* (what the store must write, and which log tokens to
emit). Nothing here touches a database, a clock or Airflow, so every row of every table can be
tested exhaustively and the invariants checked with random sequences.

How to read it: each ``*_RULES`` tuple is an ordered decision table. The first row whose
``when`` holds decides; ``design`` quotes the sentence of DESIGN.md the row implements, so a
reviewer can check the table against the contract line by line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Generic, TypeVar

from airflow_provider_bfx.catalog.codes import (
    ExecutionStatus as St,
)
from airflow_provider_bfx.catalog.codes import (
    NextLoadStatus as Nls,
)
from airflow_provider_bfx.catalog.codes import (
    Token,
    VersionMismatchPolicy,
)

F = TypeVar("F")
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True)
class Rule(Generic[F, O]):
    """One row of a decision table: ``when`` the facts hold, ``then`` is the outcome."""

    design: str
    when: Callable[[F], bool]
    then: Callable[[F], O]


def decide(rules: tuple[Rule[F, O], ...], facts: F) -> tuple[Rule[F, O], O]:
    """Apply the first matching rule. Every table ends with an always-true row."""
    for rule in rules:
        if rule.when(facts):
            return rule, rule.then(facts)
    raise AssertionError("decision table without a default row")  # pragma: no cover


@dataclass(frozen=True)
class Emit:
    """A log token to emit, with its ``key=value`` context."""

    token: Token
    context: tuple[tuple[str, object], ...] = ()

    @staticmethod
    def of(token: Token, **context: object) -> Emit:
        return Emit(token, tuple(context.items()))


class ResumeScope(str, Enum):
    """Which later runs may resume a failed batch (``[bfx] resume_scope``)."""

    LINEAGE = "lineage"  # any later run resumes
    LOGICAL_DATE = "logical_date"  # only a run of the same logical date resumes

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------------------------------------
# Batch start
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviousBatch:
    """The latest earlier batch execution of the same DAG, as the store found it."""

    execution_id: int
    status: St
    next_load_status: Nls
    original_execution_id: int
    attempt_number: int
    lineage_started_at: datetime
    logical_date: datetime | None
    has_live_task: bool  # a child execution is active and its lease has not expired
    has_failed_task: bool  # a child execution is F or A (used only to reconcile)
    # Nested batch: the parent-task lineage it was triggered from (the OriginalExecutionID of
    # the task execution that triggered it); None for a top-level batch.
    parent_lineage: int | None = None


@dataclass(frozen=True)
class ParentExecution:
    """The routed task execution that triggered this DAG run: the batch is nested under it.

    ``lineage`` is that execution's OriginalExecutionID, the first execution of the same task
    (and item) in the parent's lineage: every retry and every resumed attempt of the triggering
    task carries the same one, and a fresh parent lineage carries a new one."""

    execution_id: int
    lineage: int


@dataclass(frozen=True)
class BatchStartFacts:
    now: datetime
    package_enabled: bool
    previous: PreviousBatch | None
    retry_limit: int
    max_resume_age: int | None  # seconds; None = no limit
    full_rerun_requested: bool
    resume_scope: ResumeScope
    logical_date: datetime | None
    parent: ParentExecution | None = None  # set for a nested batch (DESIGN.md §5)


class Lineage(str, Enum):
    FRESH = "fresh"  # this batch starts a new lineage (OriginalExecutionID = itself)
    RESUME = "resume"  # this batch continues the previous batch's lineage


@dataclass(frozen=True)
class BatchStart:
    status: St
    next_load_status: Nls
    lineage: Lineage
    reason: str
    emits: tuple[Emit, ...] = ()


@dataclass(frozen=True)
class Reconciliation:
    """Closing a batch left open by a crash, by inference from its children."""

    execution_id: int
    succeeded: bool
    emit: Emit


@dataclass(frozen=True)
class BatchStartDecision:
    start: BatchStart
    reconcile: Reconciliation | None
    # The previous batch as the decision saw it, after reconciliation.
    previous: PreviousBatch | None
    rule: str

    @property
    def resumes(self) -> bool:
        return self.start.lineage is Lineage.RESUME


def reconcile_previous(
    previous: PreviousBatch | None,
) -> tuple[PreviousBatch | None, Reconciliation | None]:
    """'A previous batch still open with no live task (crashed, never closed): close it by
    inference (F/R if any child failed or was aborted, else S/P), token BFX_BATCH_RECONCILED.'"""
    if previous is None or not previous.status.is_active or previous.has_live_task:
        return previous, None
    succeeded = not previous.has_failed_task
    end = batch_end(succeeded)
    closed = replace(previous, status=end.status, next_load_status=end.next_load_status)
    emit = Emit.of(
        Token.BATCH_RECONCILED,
        batch_execution_id=previous.execution_id,
        status=end.status.value,
        next_load_status=end.next_load_status.value,
        reason="no live task" + ("; a task failed or was aborted" if not succeeded else ""),
    )
    return closed, Reconciliation(previous.execution_id, succeeded, emit)


def _prev(f: BatchStartFacts) -> PreviousBatch:
    assert f.previous is not None
    return f.previous


def _wants_resume(f: BatchStartFacts) -> bool:
    return f.previous is not None and f.previous.next_load_status is Nls.RETRY


def _age_seconds(f: BatchStartFacts) -> float:
    return (f.now - _prev(f).lineage_started_at).total_seconds()


def _fresh(reason: str, *emits: Emit) -> Callable[[BatchStartFacts], BatchStart]:
    return lambda f: BatchStart(St.EXECUTING, Nls.SKIP, Lineage.FRESH, reason, emits)


BATCH_START_RULES: tuple[Rule[BatchStartFacts, BatchStart], ...] = (
    Rule(
        "Package disabled: C/P; every task of the run is skipped.",
        lambda f: not f.package_enabled,
        lambda f: BatchStart(
            St.SKIPPED,
            Nls.PENDING,
            Lineage.FRESH,
            "package disabled",
            (Emit.of(Token.PACKAGE_DISABLED),),
        ),
    ),
    Rule(
        "A previous batch still open with a live task (overlapping runs): this batch starts its own"
        " fresh lineage and says so (BFX_CONCURRENT_BATCH).",
        lambda f: (
            f.previous is not None and f.previous.status.is_active and f.previous.has_live_task
        ),
        lambda f: BatchStart(
            St.EXECUTING,
            Nls.SKIP,
            Lineage.FRESH,
            "previous batch still running",
            (Emit.of(Token.CONCURRENT_BATCH, running_batch_execution_id=_prev(f).execution_id),),
        ),
    ),
    Rule(
        "No previous batch, or it did not ask for a retry: fresh (E).",
        lambda f: not _wants_resume(f),
        _fresh("no failed batch to resume"),
    ),
    Rule(
        "The run asks for a full rerun (dag_run.conf {'bfx': {'mode': 'full'}}): fresh (E).",
        lambda f: f.full_rerun_requested,
        _fresh("full rerun requested"),
    ),
    Rule(
        "Nested batch: its lineage follows the parent's. It resumes only a failed batch"
        " triggered from the same lineage of the same parent task; a fresh parent lineage (or"
        " a failed batch triggered from elsewhere, or run top-level) starts it fresh (E).",
        lambda f: f.parent is not None and _prev(f).parent_lineage != f.parent.lineage,
        _fresh("nested: the failed batch was not triggered from this parent lineage"),
    ),
    Rule(
        "resume_scope = logical_date: only a run of the same logical date resumes.",
        lambda f: (
            f.resume_scope is ResumeScope.LOGICAL_DATE and f.logical_date != _prev(f).logical_date
        ),
        _fresh("resume_scope=logical_date and the logical date differs"),
    ),
    Rule(
        "Fewer than RetryLimit attempts, else fresh with BFX_RETRY_LIMIT_REACHED.",
        lambda f: _prev(f).attempt_number >= f.retry_limit,
        lambda f: BatchStart(
            St.EXECUTING,
            Nls.SKIP,
            Lineage.FRESH,
            "retry limit reached",
            (
                Emit.of(
                    Token.RETRY_LIMIT_REACHED,
                    original_execution_id=_prev(f).original_execution_id,
                    attempts=_prev(f).attempt_number,
                    retry_limit=f.retry_limit,
                ),
            ),
        ),
    ),
    Rule(
        "Lineage younger than MaxResumeAge, else fresh with BFX_RESUME_EXPIRED.",
        lambda f: f.max_resume_age is not None and _age_seconds(f) > f.max_resume_age,
        lambda f: BatchStart(
            St.EXECUTING,
            Nls.SKIP,
            Lineage.FRESH,
            "lineage older than MaxResumeAge",
            (
                Emit.of(
                    Token.RESUME_EXPIRED,
                    original_execution_id=_prev(f).original_execution_id,
                    age_seconds=int(_age_seconds(f)),
                    max_resume_age=f.max_resume_age,
                ),
            ),
        ),
    ),
    Rule(
        "Previous batch NextLoadStatus = R: this batch is R, same OriginalExecutionID,"
        " AttemptNumber + 1, token BFX_BATCH_RESUME.",
        lambda f: True,
        lambda f: BatchStart(
            St.RETRYING,
            Nls.SKIP,
            Lineage.RESUME,
            "resuming the failed batch",
            (
                Emit.of(
                    Token.BATCH_RESUME,
                    original_execution_id=_prev(f).original_execution_id,
                    previous_execution_id=_prev(f).execution_id,
                    attempt=_prev(f).attempt_number + 1,
                    **({} if f.parent is None else {"parent_execution_id": f.parent.execution_id}),
                ),
            ),
        ),
    ),
)


def batch_start(facts: BatchStartFacts) -> BatchStartDecision:
    """Decide a new batch execution (a DAG run seen for the first time)."""
    previous, reconcile = reconcile_previous(facts.previous)
    facts = replace(facts, previous=previous)
    rule, start = decide(BATCH_START_RULES, facts)
    return BatchStartDecision(start=start, reconcile=reconcile, previous=previous, rule=rule.design)


def batch_reopen(status: St, package_enabled: bool, *, closed: bool = True) -> BatchStart | None:
    """'Same run again (tasks cleared after a failure): reopen the row as R.'

    Returns None when the existing row stands as it is: it is still open; or it was failed by a
    task's final failure while the DAG run goes on (``closed=False``: siblings still starting
    must see the failure, not undo it); or the package is disabled (the run keeps skipping).
    """
    if status.is_active or not closed or not package_enabled:
        return None
    return BatchStart(St.RETRYING, Nls.SKIP, Lineage.RESUME, "same run started again")


# ---------------------------------------------------------------------------------------------
# Task start
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveExecution:
    """Another active (E/R/D) execution of the same package and item."""

    execution_id: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    lease_live: bool
    has_copy_checkpoint: bool
    in_this_lineage: bool
    audit_id: int | None
    original_execution_id: int | None
    attempt_number: int
    operator_fingerprint: str | None
    batch_succeeded: bool = False  # its batch already ended S: its lineage is closed
    #: Its owner is a process of this host that no longer exists (DESIGN.md §5): the lease is
    #: not live even before it expires (``lease_live`` is then False).
    owner_dead: bool = False


@dataclass(frozen=True)
class PriorExecution:
    """The latest terminal execution of this package (and item) in this lineage."""

    execution_id: int
    status: St
    next_load_status: Nls
    audit_id: int | None
    original_execution_id: int | None
    attempt_number: int
    operator_fingerprint: str | None


@dataclass(frozen=True)
class LandedCopy:
    """The copy checkpoint of this task in this lineage: the data a compute-only restart reuses.

    Its writer's AuditID is the audit ID the data was landed under, and its fingerprint is the
    definition that landed it, whatever executions came in between."""

    execution_id: int
    audit_id: int | None
    operator_fingerprint: str | None


@dataclass(frozen=True)
class TaskStartFacts:
    batch_skips_all: bool  # the batch itself is C (package of the DAG disabled)
    package_enabled: bool
    active: tuple[ActiveExecution, ...]
    prior: PriorExecution | None
    operator_fingerprint: str | None
    policy: VersionMismatchPolicy
    decides_shape: bool  # branch / short-circuit operators: never skipped as completed
    landed: LandedCopy | None = None


class Run(str, Enum):
    """What the task does after the gate."""

    RUN = "run"  # the task's work runs
    SKIP = "skip"  # the Airflow task ends skipped
    REFUSE = "refuse"  # the Airflow task fails before any work

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Abort:
    """A stale active execution to close: its lease expired (BFX_LEASE_EXPIRED)."""

    execution_id: int
    next_load_status: Nls
    emit: Emit


@dataclass(frozen=True)
class TaskStart:
    run: Run
    status: St
    next_load_status: Nls
    reason: str
    audit_from_prior: bool = False  # AuditID = the prior execution's (D restart, skip)
    emits: tuple[Emit, ...] = ()
    discard_checkpoints: bool = False  # RERUN policy: reused state is thrown away
    failure_message: str | None = None  # REFUSE: what the Airflow task fails with


@dataclass(frozen=True)
class TaskStartDecision:
    start: TaskStart
    aborts: tuple[Abort, ...]
    prior: PriorExecution | None  # after aborts: the execution whose state is reused
    rule: str
    # When the start reuses state (skip, compute-only restart, FAIL refusal): the audit ID it
    # carries and the fingerprint of the definition that wrote that state. None otherwise.
    reused_audit_id: int | None = None
    reused_fingerprint: str | None = None


def _p(f: TaskStartFacts) -> PriorExecution:
    assert f.prior is not None
    return f.prior


def _next(f: TaskStartFacts) -> Nls | None:
    return None if f.prior is None else f.prior.next_load_status


TASK_START_RULES: tuple[Rule[TaskStartFacts, TaskStart], ...] = (
    Rule(
        "1. Package disabled -> C, task skipped, BFX_PACKAGE_DISABLED.",
        lambda f: f.batch_skips_all or not f.package_enabled,
        lambda f: TaskStart(
            Run.SKIP,
            St.SKIPPED,
            Nls.PENDING,
            "package disabled",
            emits=(Emit.of(Token.PACKAGE_DISABLED),),
        ),
    ),
    Rule(
        "2. Another active execution with a live lease -> this one is refused (A/P, the Airflow"
        " task fails with BFX_ALREADY_RUNNING, nothing of the live run touched).",
        lambda f: any(a.lease_live for a in f.active),
        lambda f: _refuse_running(next(a for a in f.active if a.lease_live)),
    ),
    Rule(
        "3. Latest terminal execution says C -> skip (BFX_SKIP_COMPLETED); except operators that"
        " decide the shape of a run, which run again and decide again.",
        lambda f: _next(f) is Nls.SKIP and not f.decides_shape,
        lambda f: TaskStart(
            Run.SKIP,
            St.SKIPPED,
            Nls.SKIP,
            "already completed in this lineage",
            audit_from_prior=True,
            emits=(
                Emit.of(
                    Token.SKIP_COMPLETED,
                    original_execution_id=_p(f).original_execution_id,
                    prior_execution_id=_p(f).execution_id,
                ),
            ),
        ),
    ),
    Rule(
        "3. Latest terminal execution says D -> status D, AuditID = that execution's AuditID"
        " (BFX_COMPUTE_ONLY_RESTART).",
        lambda f: _next(f) is Nls.COMPUTE_ONLY,
        lambda f: TaskStart(
            Run.RUN,
            St.COMPUTE_ONLY,
            Nls.SKIP,
            "copy step already landed; compute only",
            audit_from_prior=True,
            emits=(
                Emit.of(
                    Token.COMPUTE_ONLY_RESTART,
                    audit_id=reused_state(f)[0],
                    prior_execution_id=_p(f).execution_id,
                    original_execution_id=_p(f).original_execution_id,
                ),
            ),
        ),
    ),
    Rule(
        "3. Latest terminal execution says R -> R (BFX_RETRY).",
        lambda f: _next(f) is Nls.RETRY,
        lambda f: TaskStart(
            Run.RUN,
            St.RETRYING,
            Nls.SKIP,
            "previous execution failed",
            emits=(
                Emit.of(
                    Token.RETRY,
                    prior_execution_id=_p(f).execution_id,
                    original_execution_id=_p(f).original_execution_id,
                ),
            ),
        ),
    ),
    Rule(
        "3. None / P (or a shape-deciding operator) -> E.",
        lambda f: True,
        lambda f: TaskStart(
            Run.RUN,
            St.EXECUTING,
            Nls.SKIP,
            "decides the shape of the run: runs again"
            if _next(f) is Nls.SKIP
            else "nothing to resume",
        ),
    ),
)


def _refuse_running(live: ActiveExecution) -> TaskStart:
    emit = Emit.of(
        Token.ALREADY_RUNNING,
        running_execution_id=live.execution_id,
        lease_owner=live.lease_owner,
        lease_expires_at=live.lease_expires_at.isoformat() if live.lease_expires_at else None,
    )
    return TaskStart(
        Run.REFUSE,
        St.ABORTED,
        Nls.PENDING,
        "another execution holds a live lease",
        emits=(emit,),
        failure_message=(
            f"[{Token.ALREADY_RUNNING}] execution {live.execution_id} of this task is still running"
            f" (lease owner {live.lease_owner}, expires {live.lease_expires_at}); refusing to run"
            " it twice. Wait for it, or let its lease expire and run `bfx recover`."
        ),
    )


def _abort_stale(a: ActiveExecution, now: datetime) -> Abort:
    if a.batch_succeeded:
        nls = Nls.PENDING  # the lineage is closed: nothing waits for this task
    else:
        nls = Nls.COMPUTE_ONLY if a.has_copy_checkpoint else Nls.RETRY
    ago = (now - a.lease_expires_at).total_seconds() if a.lease_expires_at else None
    context: dict[str, object] = {
        "execution_id": a.execution_id,
        "lease_owner": a.lease_owner,
        "expired_seconds_ago": None if ago is None else round(ago, 1),
    }
    if a.owner_dead:
        context["owner_dead"] = True  # the lease had not lapsed: its process is gone
    emit = Emit.of(Token.LEASE_EXPIRED, **context, next_load_status=nls.value)
    return Abort(a.execution_id, nls, emit)


def expire(active: ActiveExecution, now: datetime) -> Abort:
    """'Expired lease -> the stale row becomes A with NextLoadStatus D if its copy checkpoint
    exists else R, BFX_LEASE_EXPIRED.' Also used by the expiry scan."""
    return _abort_stale(active, now)


def reused_state(f: TaskStartFacts) -> tuple[int | None, str | None]:
    """(audit ID, fingerprint) of the state the prior execution's instruction reuses: for a
    compute-only restart the landed copy's, else the prior execution's own."""
    prior = f.prior
    if prior is None:
        return None, None
    if prior.next_load_status is Nls.COMPUTE_ONLY and f.landed is not None:
        return (
            f.landed.audit_id if f.landed.audit_id is not None else prior.audit_id,
            f.landed.operator_fingerprint or prior.operator_fingerprint,
        )
    return prior.audit_id, prior.operator_fingerprint


def _mismatch(f: TaskStartFacts, start: TaskStart) -> TaskStart:
    """Step 4: the version-mismatch policy, applied when reused state was written by other code."""
    reuses_state = start.audit_from_prior or start.status is St.COMPUTE_ONLY
    prior = f.prior
    recorded = reused_state(f)[1]
    if (
        not reuses_state
        or prior is None
        or recorded is None
        or f.operator_fingerprint is None
        or recorded == f.operator_fingerprint
    ):
        return start
    emit = Emit.of(
        Token.FINGERPRINT_MISMATCH,
        policy=f.policy.value,
        recorded=recorded[:12],
        current=f.operator_fingerprint[:12],
        prior_execution_id=prior.execution_id,
    )
    if f.policy is VersionMismatchPolicy.WARN:
        return replace(start, emits=(*start.emits, emit))
    if f.policy is VersionMismatchPolicy.RERUN:
        return TaskStart(
            Run.RUN,
            St.RETRYING,
            Nls.SKIP,
            "task definition changed: rerun in full (version_mismatch_policy=RERUN)",
            emits=(emit,),
            discard_checkpoints=True,
        )
    return TaskStart(
        Run.REFUSE,
        St.ABORTED,
        prior.next_load_status,
        "task definition changed (version_mismatch_policy=FAIL)",
        audit_from_prior=True,
        emits=(emit,),
        failure_message=(
            f"[{Token.FINGERPRINT_MISMATCH}] the task's definition changed since execution"
            f" {prior.execution_id} recorded the state this run would reuse (operator fingerprint"
            f" {recorded[:12]} -> {f.operator_fingerprint[:12]}) and"
            " version_mismatch_policy=FAIL. Revert the change, set the policy to WARN or RERUN,"
            " or run `bfx reset DAG_ID --task TASK_ID` to start this task fresh."
        ),
    )


def task_start(facts: TaskStartFacts, now: datetime) -> TaskStartDecision:
    """Decide a task execution (DESIGN.md §4 'Task start', steps 1-4)."""
    aborts: tuple[Abort, ...] = ()
    if (
        facts.package_enabled
        and not facts.batch_skips_all
        and not any(a.lease_live for a in facts.active)
    ):
        aborts = tuple(_abort_stale(a, now) for a in facts.active)
        # A stale execution of this lineage that we just closed is now the latest terminal one.
        for active, abort in zip(facts.active, aborts, strict=True):
            if active.in_this_lineage and (
                facts.prior is None or active.execution_id > facts.prior.execution_id
            ):
                facts = replace(
                    facts,
                    prior=PriorExecution(
                        execution_id=active.execution_id,
                        status=St.ABORTED,
                        next_load_status=abort.next_load_status,
                        audit_id=active.audit_id,
                        original_execution_id=active.original_execution_id,
                        attempt_number=active.attempt_number,
                        operator_fingerprint=active.operator_fingerprint,
                    ),
                )
    rule, start = decide(TASK_START_RULES, facts)
    start = _mismatch(facts, start)
    audit, fingerprint = reused_state(facts) if start.audit_from_prior else (None, None)
    return TaskStartDecision(
        start=start,
        aborts=aborts,
        prior=facts.prior,
        rule=rule.design,
        reused_audit_id=audit,
        reused_fingerprint=fingerprint,
    )


def batch_skips_all(batch_status: St) -> bool:
    """The fact ``TaskStartFacts.batch_skips_all`` from the batch row's status: a batch that is
    itself ``C`` (its DAG's package disabled) skips every task."""
    return batch_status is St.SKIPPED


@dataclass(frozen=True)
class StartGuard:
    """Where a task start's decision does not depend on what the store would read (decision
    0121). For a task with no execution of its own in the lineage (no prior, no landed copy, no
    first row) and none active anywhere, its package registered and enabled, in a batch that is
    not closed and whose status is in ``batch``: whatever the operator's fingerprint, the
    mismatch policy, whether the task decides the run's shape and whether the DAG's package is
    enabled, :func:`task_start` decides ``decision`` and aborts nothing. The store may then
    insert that row in one guarded statement (those facts still hold, checked under the batch
    row lock) instead of reading the facts first; when the guard does not hold nothing is
    written and the start reads, decides and writes as always. A guard never decides anything:
    it is this table's own answer, worked out by evaluating it."""

    decision: TaskStartDecision
    batch: frozenset[St]


#: The facts a task start is expected to meet: the first try of a task in a running batch.
_EXPECTED_START_BATCH = St.EXECUTING
_GUARD_NOW = datetime(2000, 1, 1)  # no fact of a guard's box depends on the time


def task_start_guard() -> StartGuard | None:
    """The batch statuses, around a running batch, over which :func:`task_start` decides one
    plain row for a task that has nothing in its lineage (:class:`StartGuard`); None if the
    table ever stops deciding that start without reading (it reuses state, emits a token,
    aborts or refuses). Evaluated from ``TASK_START_RULES`` and :func:`batch_reopen`, never
    written by hand, so that the table stays the one home of the decision."""
    return _START_GUARD


def _fresh_starts(batch: St) -> set[TaskStartDecision | None]:
    """Every decision of a first start in a not-closed batch with status ``batch``, over the
    facts a guard does not read (None: the batch row would be reopened first)."""
    found: set[TaskStartDecision | None] = set()
    for dag_enabled in (False, True):
        if batch_reopen(batch, dag_enabled, closed=False) is not None:
            found.add(None)
    for policy in VersionMismatchPolicy:
        for decides_shape in (False, True):
            for fingerprint in (None, "0" * 64):
                found.add(
                    task_start(
                        TaskStartFacts(
                            batch_skips_all=batch_skips_all(batch),
                            package_enabled=True,
                            active=(),
                            prior=None,
                            operator_fingerprint=fingerprint,
                            policy=policy,
                            decides_shape=decides_shape,
                            landed=None,
                        ),
                        _GUARD_NOW,
                    )
                )
    return found


def _start_guard() -> StartGuard | None:
    expected = _fresh_starts(_EXPECTED_START_BATCH)
    if len(expected) != 1:
        return None
    (decision,) = expected
    if decision is None:
        return None
    start = decision.start
    if (
        decision.aborts
        or start.run is not Run.RUN
        or start.audit_from_prior
        or start.discard_checkpoints
        or start.emits
        or decision.reused_audit_id is not None
    ):
        return None
    batch = frozenset(s for s in St if _fresh_starts(s) == {decision})
    return StartGuard(decision, batch)


_START_GUARD = _start_guard()


# ---------------------------------------------------------------------------------------------
# Task end and batch end
# ---------------------------------------------------------------------------------------------


class TaskOutcome(str, Enum):
    SUCCESS = "success"
    FAILED_TRY = "failed_try"  # Airflow will retry
    FINAL_FAILURE = "final_failure"  # no Airflow retries left
    SKIPPED_BY_LOGIC = "skipped_by_logic"  # a branch or short-circuit skipped it

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TaskEndFacts:
    outcome: TaskOutcome
    current_status: St
    batch_status: St
    has_copy_checkpoint: bool


@dataclass(frozen=True)
class TaskEnd:
    status: St
    next_load_status: Nls
    record_error: bool = False
    fail_batch: bool = False  # mark the batch F/R and stamp succeeded siblings C


TASK_END_RULES: tuple[Rule[TaskEndFacts, TaskEnd], ...] = (
    Rule(
        "Success -> S, NextLoadStatus = C if the batch has already failed (a parallel sibling"
        " failed first), else P.",
        lambda f: f.outcome is TaskOutcome.SUCCESS,
        lambda f: TaskEnd(St.SUCCEEDED, Nls.SKIP if f.batch_status is St.FAILED else Nls.PENDING),
    ),
    Rule(
        "Failure of one try -> F with NextLoadStatus D when the copy step had landed, else R, and"
        " an ExecutionError row.",
        lambda f: f.outcome is TaskOutcome.FAILED_TRY,
        lambda f: TaskEnd(
            St.FAILED, Nls.COMPUTE_ONLY if f.has_copy_checkpoint else Nls.RETRY, record_error=True
        ),
    ),
    Rule(
        "Final failure additionally marks the batch F/R and every sibling that succeeded in this"
        " batch NextLoadStatus = C.",
        lambda f: f.outcome is TaskOutcome.FINAL_FAILURE,
        lambda f: TaskEnd(
            St.FAILED,
            Nls.COMPUTE_ONLY if f.has_copy_checkpoint else Nls.RETRY,
            record_error=True,
            fail_batch=True,
        ),
    ),
    Rule(
        "A skip raised by the task's own logic (a branch) is C/P.",
        lambda f: True,
        lambda f: TaskEnd(St.SKIPPED, Nls.PENDING),
    ),
)


def task_end(facts: TaskEndFacts) -> TaskEnd | None:
    """Decide how a task execution ends; None when the row is no longer active (it was already
    ended, or aborted by an expiry scan or a reset while it ran) and must not be rewritten."""
    if not facts.current_status.is_active:
        return None
    return decide(TASK_END_RULES, facts)[1]


@dataclass(frozen=True)
class EndGuard:
    """Where a task end's decision does not depend on what the store would read: for every
    row status in ``current`` and batch status in ``batch``, whether the copy step landed or
    not, :func:`task_end` decides ``end``. The store may then write ``end`` in one guarded
    statement (the row and its batch row still have such statuses, checked under the batch row
    lock) instead of reading the facts first; when the guard does not hold it reads them and
    decides as always (decision 0120). A guard never decides anything: it is this table's own
    answer, worked out by evaluating it."""

    end: TaskEnd
    current: frozenset[St]
    batch: frozenset[St]


#: The facts a task end is expected to meet: the row as its start wrote it, a running batch.
_EXPECTED_END = (St.EXECUTING, St.EXECUTING)


def task_end_guard(outcome: TaskOutcome) -> EndGuard | None:
    """The largest set of row and batch statuses around the expected facts over which
    :func:`task_end` decides one single-row write for ``outcome``, whatever the copy step did;
    None when there is none (the expected decision writes an error row or ends the batch, or
    depends on the copy step: a failure). Evaluated from ``TASK_END_RULES``, never written
    by hand, so that the table stays the one home of the decision."""
    return _GUARDS.get(outcome)


def _end_guard(outcome: TaskOutcome) -> EndGuard | None:
    statuses = tuple(St)

    def ends(current: St, batch: St) -> set[TaskEnd | None]:
        return {task_end(TaskEndFacts(outcome, current, batch, landed)) for landed in (False, True)}

    row0, batch0 = _EXPECTED_END
    expected = ends(row0, batch0)
    if len(expected) != 1:
        return None
    (end,) = expected
    if end is None or end.record_error or end.fail_batch:
        return None
    batch = frozenset(b for b in statuses if ends(row0, b) == {end})
    current = frozenset(c for c in statuses if all(ends(c, b) == {end} for b in batch))
    return EndGuard(end, current, batch)


_GUARDS: dict[TaskOutcome, EndGuard] = {
    o: g for o in TaskOutcome if (g := _end_guard(o)) is not None
}


@dataclass(frozen=True)
class BatchEnd:
    status: St
    next_load_status: Nls
    reset_lineage: bool  # every NextLoadStatus in the lineage back to P
    stamp_completed: bool  # every sibling that succeeded in this batch -> NextLoadStatus C


def batch_end(succeeded: bool) -> BatchEnd:
    """'Success -> S/P and every NextLoadStatus in the lineage back to P. Failure -> F/R with the
    stamping above (idempotent).'"""
    if succeeded:
        return BatchEnd(St.SUCCEEDED, Nls.PENDING, reset_lineage=True, stamp_completed=False)
    return BatchEnd(St.FAILED, Nls.RETRY, reset_lineage=False, stamp_completed=True)
