"""Operations a person runs at 2 a.m.: what will the next run do, what happened, start fresh.

``plan`` changes nothing: it reads the same facts a batch start and each task start would read
and asks the same pure state machine, so its answer is the decision the next run will take
(for a run that does not ask for a full rerun; the operator fingerprint of a changed task is only
known to Airflow, so a version mismatch is not predicted). ``history`` lists recent batches by
lineage. ``reset`` rewrites instructions so the next run starts fresh, for a DAG or one task.
No Airflow here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from airflow_provider_bfx.catalog import keys, machine, views
from airflow_provider_bfx.catalog.codes import (
    CheckpointType,
    ExecutionStatus,
    NextLoadStatus,
    Token,
    VersionMismatchPolicy,
    parse_next_load_status,
    parse_status,
)
from airflow_provider_bfx.catalog.facts import batch_start_read_txn, deciding_batch_query
from airflow_provider_bfx.catalog.liveness import lease_live, owner_known_dead
from airflow_provider_bfx.catalog.machine import ResumeScope, Run
from airflow_provider_bfx.catalog.packages import package_query
from airflow_provider_bfx.catalog.rows import ACTIVE, decides
from airflow_provider_bfx.catalog.store import CatalogStore


@dataclass(frozen=True)
class PlannedTask:
    task_id: str
    item_fingerprint: str
    map_index: int | None
    run: Run
    status: ExecutionStatus
    reason: str
    prior_execution_id: int | None
    original_execution_id: int | None
    audit_id: int | None  # for a compute-only restart: the landed audit ID it will reuse
    #: Why the deciding row holds Airflow's outcome rather than its own callback's, if it does
    #: (``BFX_ADOPTED_AIRFLOW_STATE``, decision 0080).
    adopted: str | None = None

    @property
    def action(self) -> str:
        if self.run is Run.REFUSE:
            return "refused (already running)"
        return {
            ExecutionStatus.SKIPPED: "skip",
            ExecutionStatus.COMPUTE_ONLY: "compute-only restart",
            ExecutionStatus.RETRYING: "retry",
            ExecutionStatus.EXECUTING: "run",
        }.get(self.status, self.status.value)


@dataclass(frozen=True)
class Plan:
    dag_id: str
    known: bool  # the DAG has run under the catalog before
    resumes: bool
    batch_status: ExecutionStatus | None
    lineage_id: int | None
    attempt: int
    reason: str
    reconcile: str | None
    tasks: list[PlannedTask] = field(default_factory=list)


def plan(
    store: CatalogStore,
    dag_id: str,
    *,
    full_rerun: bool = False,
    resume_scope: ResumeScope = ResumeScope.LINEAGE,
    logical_date: datetime | None = None,
    retry_limit: int | None = None,
    task_ids: Collection[str] = (),
) -> Plan:
    """What the next run of ``dag_id`` will do, task by task, and why. Changes nothing.

    ``task_ids``: the DAG's tasks as Airflow knows them (the recovery view passes them): a task
    the catalog has never seen (it did not start in any run yet) is listed as "run" too, so the
    plan covers the whole DAG, not only what the catalog has rows of.

    ``retry_limit`` overrides ``Package.RetryLimit`` as a DAG's own setting does at batch start.
    A task that decides the shape of the run (a branch) is shown as its rows say; its run will
    run it again whatever they say (DESIGN.md §4): the catalog does not know operator classes.
    """

    def work(conn: Connection) -> Plan:
        now = store.clock()
        E, P = store.s.Execution, store.s.Package
        pkg = conn.execute(package_query(store, dag_id, None)).first()
        if pkg is None:
            never = Plan(dag_id, False, False, None, None, 1, "never run under the catalog", None)
            never.tasks.extend(
                PlannedTask(
                    t,
                    keys.NO_ITEM,
                    None,
                    Run.RUN,
                    ExecutionStatus.EXECUTING,
                    "never run under the catalog: runs",
                    None,
                    None,
                    None,
                )
                for t in sorted(task_ids)
            )
            return never
        previous = batch_start_read_txn(store, conn, dag_id, now).previous
        decision = machine.batch_start(
            machine.BatchStartFacts(
                now=now,
                package_enabled=bool(pkg.IsEnabled),
                previous=previous,
                retry_limit=retry_limit if retry_limit is not None else int(pkg.RetryLimit),
                max_resume_age=pkg.MaxResumeAge,
                full_rerun_requested=full_rerun,
                resume_scope=resume_scope,
                logical_date=logical_date,
            )
        )
        prev = decision.previous
        lineage = prev.original_execution_id if decision.resumes and prev else None
        reconcile = None
        if decision.reconcile is not None:
            outcome = "S/P" if decision.reconcile.succeeded else "F/R"
            reconcile = f"batch {decision.reconcile.execution_id} will be closed as {outcome}"
        result = Plan(
            dag_id=dag_id,
            known=True,
            resumes=decision.resumes,
            batch_status=decision.start.status,
            lineage_id=lineage,
            attempt=prev.attempt_number + 1 if decision.resumes and prev else 1,
            reason=decision.start.reason,
            reconcile=reconcile,
        )
        packages = conn.execute(
            select(P).where(P.c.DagId == dag_id, P.c.TaskId.is_not(None)).order_by(P.c.TaskId)
        ).all()
        ids = [p.PackageID for p in packages]
        priors: dict[tuple[int, str], Any] = {}
        map_index: dict[tuple[int, str], int | None] = {}
        if lineage is not None and ids:
            rows = conn.execute(
                select(E)
                .where(E.c.LineageID == lineage, E.c.PackageID.in_(ids))
                .order_by(E.c.ExecutionID)
            ).all()
            for r in rows:
                map_index[(r.PackageID, r.ItemFingerprint)] = r.MapIndex
            # The rows that decide: the same rule the task start applies (rows.decides).
            for r in conn.execute(
                select(E)
                .where(E.c.LineageID == lineage, E.c.PackageID.in_(ids), decides(E))
                .order_by(E.c.ExecutionID)
            ):
                priors[(r.PackageID, r.ItemFingerprint)] = r
        # The latest copy checkpoint of each task and item in the lineage, and its writer: a
        # compute-only restart reuses that writer's audit ID (as the task start does).
        landed: dict[tuple[int, str], machine.LandedCopy] = {}
        if lineage is not None and ids:
            C = store.s.ExecutionCheckpoint
            for r in conn.execute(
                select(
                    E.c.PackageID,
                    E.c.ItemFingerprint,
                    E.c.ExecutionID,
                    E.c.AuditID,
                    func.coalesce(C.c.OperatorFingerprint, E.c.OperatorFingerprint),
                )
                .select_from(C.join(E, E.c.ExecutionID == C.c.ExecutionID))
                .where(
                    E.c.LineageID == lineage,
                    E.c.PackageID.in_(ids),
                    C.c.CheckpointType == CheckpointType.NODE_OUTPUT.value,
                    C.c.NodeKey == keys.COPY_NODE,
                )
                .order_by(C.c.CheckpointID)
            ):
                landed[(r[0], r[1])] = machine.LandedCopy(r[2], r[3], r[4])
        actives: dict[tuple[int, str], list[Any]] = defaultdict(list)
        if ids:
            for r in conn.execute(
                select(E).where(E.c.PackageID.in_(ids), E.c.ExecutionStatus.in_(ACTIVE))
            ):
                actives[(r.PackageID, r.ItemFingerprint)].append(r)
        for p in packages:
            items = sorted({fp for (pid, fp) in [*priors, *actives] if pid == p.PackageID}) or [
                keys.NO_ITEM
            ]
            for item in items:
                key = (p.PackageID, item)
                result.tasks.append(
                    _plan_task(
                        store,
                        p,
                        p.TaskId,
                        map_index.get(key) if item != keys.NO_ITEM else None,
                        key,
                        priors.get(key),
                        actives.get(key, []),
                        landed.get(key),
                        lineage,
                        decision,
                        now,
                    )
                )
        listed = {t.task_id for t in result.tasks}
        for task_id in sorted(set(task_ids) - listed):
            result.tasks.append(
                PlannedTask(
                    task_id=task_id,
                    item_fingerprint=keys.NO_ITEM,
                    map_index=None,
                    run=Run.RUN,
                    status=ExecutionStatus.EXECUTING,
                    reason="not started under the catalog yet: runs",
                    prior_execution_id=None,
                    original_execution_id=None,
                    audit_id=None,
                )
            )
        result.tasks.sort(key=lambda t: (t.task_id, t.map_index if t.map_index is not None else -1))
        deciding = [t.prior_execution_id for t in result.tasks if t.prior_execution_id]
        if deciding:
            adopted = _adoptions(store, conn, deciding)
            result.tasks[:] = [
                replace(t, adopted=adopted.get(t.prior_execution_id or 0)) for t in result.tasks
            ]
        return result

    return store.transaction(work, "plan")


def _adoptions(store: CatalogStore, conn: Connection, execution_ids: list[int]) -> dict[int, str]:
    """The latest adoption note of each of these executions (their ExecutionError rows of type
    ``BFX_ADOPTED_AIRFLOW_STATE``)."""
    Err = store.s.ExecutionError
    rows = conn.execute(
        select(Err.c.ExecutionID, Err.c.ErrorMessage)
        .where(
            Err.c.ExecutionID.in_(execution_ids),
            Err.c.ErrorType == Token.ADOPTED_AIRFLOW_STATE.value,
        )
        .order_by(Err.c.ExecutionErrorID)
    ).all()
    return {int(r.ExecutionID): str(r.ErrorMessage) for r in rows}


def _plan_task(
    store: CatalogStore,
    package: Any,
    task_id: str,
    map_index: int | None,
    key: tuple[int, str],
    prior_row: Any,
    active_rows: list[Any],
    landed: machine.LandedCopy | None,
    lineage: int | None,
    decision: machine.BatchStartDecision,
    now: datetime,
) -> PlannedTask:
    where = f"{store.s.qualified(store.s.Execution)} row ExecutionID="
    prior = None
    if prior_row is not None:
        prior = machine.PriorExecution(
            execution_id=prior_row.ExecutionID,
            status=parse_status(prior_row.ExecutionStatus, row=f"{where}{prior_row.ExecutionID}"),
            next_load_status=parse_next_load_status(
                prior_row.NextLoadStatus, row=f"{where}{prior_row.ExecutionID}"
            ),
            audit_id=prior_row.AuditID,
            original_execution_id=prior_row.OriginalExecutionID,
            attempt_number=prior_row.AttemptNumber,
            operator_fingerprint=prior_row.OperatorFingerprint,
        )
    active = tuple(
        machine.ActiveExecution(
            execution_id=r.ExecutionID,
            lease_owner=r.LeaseOwner,
            lease_expires_at=r.LeaseExpiresAt,
            # The task start's own rule (parked by Airflow: live; a dead owner: not).
            lease_live=lease_live(r.LeaseOwner, r.LeaseExpiresAt, now),
            owner_dead=owner_known_dead(r.LeaseOwner),
            has_copy_checkpoint=landed is not None and r.LineageID == lineage,
            in_this_lineage=lineage is not None and r.LineageID == lineage,
            audit_id=r.AuditID,
            original_execution_id=r.OriginalExecutionID,
            attempt_number=r.AttemptNumber,
            operator_fingerprint=r.OperatorFingerprint,
        )
        for r in active_rows
    )
    start = machine.task_start(
        machine.TaskStartFacts(
            batch_skips_all=decision.start.status is ExecutionStatus.SKIPPED,
            package_enabled=bool(package.IsEnabled),
            active=active,
            prior=prior,
            operator_fingerprint=None,
            policy=VersionMismatchPolicy.WARN,
            decides_shape=False,
            landed=landed,
        ),
        now,
    )
    chosen = start.prior
    return PlannedTask(
        task_id=task_id,
        item_fingerprint=key[1],
        map_index=map_index,
        run=start.start.run,
        status=start.start.status,
        reason=start.start.reason,
        prior_execution_id=chosen.execution_id if chosen else None,
        original_execution_id=(chosen.original_execution_id if chosen else None),
        audit_id=start.reused_audit_id,
    )


#: A DAG's batch with its tasks' status counts (``bfx history``, the recovery view).
BatchHistory = views.BatchSummary


def history(store: CatalogStore, dag_id: str, limit: int = 10) -> list[BatchHistory]:
    """The latest ``limit`` batches of a DAG, newest first, with their tasks' status counts."""
    return views.batch_page(store, dag_id, limit).batches


def reset_preview(plan_now: Plan, task_id: str | None = None) -> str:
    """What the next run will do once ``reset(dag_id, task_id)`` is done: the sentence a person
    confirms before resetting (the recovery view). Pure: computed from the current plan."""
    if not plan_now.known:
        return f"{plan_now.dag_id} has never run under the catalog: its next run runs every task"
    total = len({t.task_id for t in plan_now.tasks})
    if task_id is None:
        return (
            f"The next run of {plan_now.dag_id} starts a fresh lineage (attempt 1) and runs all"
            f" {total} task(s); nothing of the failed run is skipped or reused."
        )
    if not plan_now.resumes:
        return (
            f"The next run of {plan_now.dag_id} starts a fresh lineage anyway and runs"
            f" {task_id} in full: nothing to reset."
        )
    others = Counter(t.action for t in plan_now.tasks if t.task_id != task_id)
    rest = ", ".join(f"{n} {a}" for a, n in sorted(others.items())) or "no other task"
    return (
        f"The next run of {plan_now.dag_id} resumes lineage {plan_now.lineage_id} (attempt"
        f" {plan_now.attempt}) and runs {task_id} in full: no skip, no compute-only restart,"
        f" its checkpoints discarded. The other tasks as planned: {rest}."
    )


@dataclass(frozen=True)
class ResetResult:
    dag_id: str
    task_id: str | None
    changed_rows: int
    discarded_checkpoints: int
    message: str


def reset(store: CatalogStore, dag_id: str, task_id: str | None = None) -> ResetResult:
    """Force a fresh start: of the whole DAG (its failed lineage is not resumed), or of one task
    (in the lineage the next run resumes, that task runs in full: no skip, no compute-only
    restart, its checkpoints discarded)."""

    def work(conn: Connection) -> ResetResult:
        now = store.clock()
        E, P, C = store.s.Execution, store.s.Package, store.s.ExecutionCheckpoint
        pkg = conn.execute(store.impl.lock(package_query(store, dag_id, None), P)).first()
        if pkg is None:
            raise LookupError(f"DAG {dag_id!r} has never run under this catalog: nothing to reset")
        # The batch the next run would decide from (the batch start's own rule), not merely the
        # latest: a run made while the DAG was disabled decides nothing.
        latest = conn.execute(deciding_batch_query(store, pkg.PackageID)).first()
        if latest is None:
            return ResetResult(dag_id, task_id, 0, 0, "no batch yet: the next run starts fresh")
        if latest.ExecutionStatus in ACTIVE:
            live = sum(
                lease_live(owner, expires, now)
                for owner, expires in conn.execute(
                    select(E.c.LeaseOwner, E.c.LeaseExpiresAt).where(
                        E.c.ParentExecutionID == latest.ExecutionID,
                        E.c.ExecutionStatus.in_(ACTIVE),
                    )
                )
            )
            if live:
                raise RuntimeError(
                    f"batch {latest.ExecutionID} of {dag_id!r} is running ({live} live task(s));"
                    " wait for it to end, then reset"
                )
        if task_id is None:
            changed = conn.execute(
                update(E)
                .where(E.c.ExecutionID == latest.ExecutionID, E.c.NextLoadStatus != "P")
                .values(NextLoadStatus=NextLoadStatus.PENDING.value, UpdatedAt=now)
            ).rowcount
            if latest.ExecutionStatus in ACTIVE:
                changed += conn.execute(
                    update(E)
                    .where(E.c.ExecutionID == latest.ExecutionID)
                    .values(
                        ExecutionStatus=ExecutionStatus.ABORTED.value,
                        NextLoadStatus=NextLoadStatus.PENDING.value,
                        EndTime=now,
                        UpdatedAt=now,
                    )
                ).rowcount
            return ResetResult(
                dag_id, None, changed, 0, f"the next run of {dag_id} starts a fresh lineage"
            )
        tp = conn.execute(package_query(store, dag_id, task_id)).first()
        if tp is None:
            raise LookupError(f"task {task_id!r} of DAG {dag_id!r} is not in the catalog")
        if latest.ExecutionStatus == ExecutionStatus.SUCCEEDED.value:
            # The lineage closed with that success: the next run starts a fresh one, where the
            # task runs in full anyway. A closed lineage keeps every instruction at P (DESIGN.md
            # §4 "Batch end"), so nothing is written.
            return ResetResult(
                dag_id,
                task_id,
                0,
                0,
                f"the last run of {dag_id} succeeded: its next run starts a fresh lineage and"
                f" runs {task_id} in full; nothing to reset",
            )
        lineage = latest.LineageID
        # The rows that decide each item's next start: the task start's own rule.
        rows = conn.execute(
            select(E)
            .where(E.c.LineageID == lineage, E.c.PackageID == tp.PackageID, decides(E))
            .order_by(E.c.ExecutionID)
        ).all()
        latest_per_item: dict[str, Any] = {r.ItemFingerprint: r for r in rows}
        changed = 0
        discarded = 0
        for item, r in latest_per_item.items():
            changed += conn.execute(
                update(E)
                .where(E.c.ExecutionID == r.ExecutionID)
                .values(NextLoadStatus=NextLoadStatus.RETRY.value, UpdatedAt=now)
            ).rowcount
            discarded += conn.execute(
                delete(C).where(C.c.ScopeKey == keys.scope_key(lineage, tp.PackageID, item))
            ).rowcount
        return ResetResult(
            dag_id,
            task_id,
            changed,
            discarded,
            f"{task_id} runs in full in the next run of {dag_id}"
            f" ({changed} instruction(s) set to R, {discarded} checkpoint(s) discarded)",
        )

    return store.transaction(work, "reset")
