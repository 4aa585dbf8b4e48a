"""``bfx plan``, ``bfx history``, ``bfx reset``, ``bfx resume``, ``bfx recover``: the on-call
verbs.

Each reaches the catalog like ``bfx catalog init`` does (``--url`` or ``--conn-id``) and prints
plain text a person can read at 2 a.m.: one line per task, the decision first, then why.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from airflow_provider_bfx.catalog import operations
from airflow_provider_bfx.catalog.machine import ResumeScope
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.cli.catalog import _add_target_arguments, _open_catalog
from airflow_provider_bfx.cli.main import EXIT_FAILED, EXIT_OK, CliError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="what the next run of a DAG will do, task by task, and why (changes nothing)",
    )
    plan.add_argument("dag_id")
    plan.add_argument(
        "--full", action="store_true", help='as for dag_run.conf {"bfx": {"mode": "full"}}'
    )
    plan.add_argument(
        "--resume-scope", choices=[s.value for s in ResumeScope], default=ResumeScope.LINEAGE.value
    )
    _add_target_arguments(plan)
    plan.set_defaults(func=run_plan)

    hist = subparsers.add_parser("history", help="the latest batches of a DAG, by lineage")
    hist.add_argument("dag_id")
    hist.add_argument("--limit", type=int, default=10)
    _add_target_arguments(hist)
    hist.set_defaults(func=run_history)

    reset = subparsers.add_parser(
        "reset", help="force a fresh start of a DAG's next run, or of one task in it"
    )
    reset.add_argument("dag_id")
    reset.add_argument("--task", metavar="TASK_ID", help="reset only this task")
    _add_target_arguments(reset)
    reset.set_defaults(func=run_reset)

    resume = subparsers.add_parser(
        "resume",
        help="resume the DAG's failed run in place: clear its failed tasks through Airflow"
        " (needs Airflow's metadata DB; the tasks that succeeded start nothing)",
    )
    resume.add_argument("dag_id")
    resume.add_argument(
        "--run-id", help="the failed run (default: the run of the DAG's latest batch)"
    )
    resume.add_argument(
        "--dry-run", action="store_true", help="say what would be cleared, clear nothing"
    )
    _add_target_arguments(resume)
    resume.set_defaults(func=run_resume)

    recover = subparsers.add_parser(
        "recover", help="expiry scan: close executions whose lease expired (BFX_LEASE_EXPIRED)"
    )
    _add_target_arguments(recover)
    recover.set_defaults(func=run_recover)


def _store(args: argparse.Namespace) -> tuple[CatalogStore, str]:
    engine, where = _open_catalog(args)
    return CatalogStore(engine), where


def run_plan(args: argparse.Namespace) -> int:
    store, where = _store(args)
    try:
        p = operations.plan(
            store, args.dag_id, full_rerun=args.full, resume_scope=ResumeScope(args.resume_scope)
        )
    finally:
        store.engine.dispose()
    print(f"bfx plan {args.dag_id}  (catalog {where})")
    if not p.known:
        print("  never run under the catalog: the next run runs every task")
        return EXIT_OK
    if p.reconcile:
        print(f"  first: {p.reconcile} ({'[BFX_BATCH_RECONCILED]'})")
    lineage = (
        f"resumes lineage {p.lineage_id}, attempt {p.attempt}" if p.resumes else "fresh lineage"
    )
    status = p.batch_status.value if p.batch_status else "?"
    print(f"  batch: {status} - {lineage} ({p.reason})")
    if not p.tasks:
        print("  no task of this DAG is in the catalog yet")
        return EXIT_OK
    width = max(len(_name(t)) for t in p.tasks)
    for t in p.tasks:
        why = t.reason
        if t.prior_execution_id is not None:
            why += f"; decided by execution {t.prior_execution_id}"
        if t.adopted:
            why += f" (BFX_ADOPTED_AIRFLOW_STATE: {t.adopted})"
        if t.audit_id is not None and t.action == "compute-only restart":
            why += f"; reuses audit_id {t.audit_id}"
        print(f"  {_name(t):<{width}}  {t.action:<21} {why}")
    counts = Counter(t.action for t in p.tasks)
    print("  totals: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    return EXIT_OK


def _name(t: operations.PlannedTask) -> str:
    return t.task_id if t.map_index is None else f"{t.task_id}[{t.map_index}]"


def run_history(args: argparse.Namespace) -> int:
    store, where = _store(args)
    try:
        rows = operations.history(store, args.dag_id, args.limit)
    finally:
        store.engine.dispose()
    print(f"bfx history {args.dag_id}  (catalog {where}, newest first)")
    if not rows:
        print("  no batch yet")
        return EXIT_OK
    for b in rows:
        tasks = " ".join(f"{s}={n}" for s, n in b.task_counts.items()) or "no tasks"
        ended = b.end_time.isoformat(sep=" ", timespec="seconds") if b.end_time else "open"
        print(
            f"  batch {b.execution_id:<6} lineage {b.lineage_id:<6} attempt {b.attempt}  "
            f"{b.status}/{b.next_load_status}  run {b.run_id}  "
            f"{b.start_time.isoformat(sep=' ', timespec='seconds')} -> {ended}  tasks: {tasks}"
        )
    return EXIT_OK


def run_reset(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    try:
        result = operations.reset(store, args.dag_id, args.task)
    except (LookupError, RuntimeError) as exc:
        raise CliError(str(exc), EXIT_FAILED) from exc
    finally:
        store.engine.dispose()
    print(result.message)
    return EXIT_OK


def run_resume(args: argparse.Namespace) -> int:
    from airflow_provider_bfx.resume_in_place import ResumeRefused, resume_failed_run

    store, _ = _store(args)
    try:
        result = resume_failed_run(store, args.dag_id, args.run_id, dry_run=args.dry_run)
    except ResumeRefused as exc:
        raise CliError(str(exc), EXIT_FAILED) from exc
    finally:
        store.engine.dispose()
    print(result.message)
    if not result.dry_run:
        from airflow_provider_bfx.audit import cli_user, record_action

        outcome = {"run_id": result.run_id, "cleared": result.cleared, "message": result.message}
        record_action("bfx.resume", cli_user(), args.dag_id, None, outcome)
    return EXIT_OK


def run_recover(args: argparse.Namespace) -> int:
    store, where = _store(args)
    try:
        expired = store.expire_leases()
    finally:
        store.engine.dispose()
    for e in expired:
        print(e.log_line)
    print(f"{len(expired)} execution(s) with an expired lease closed in {where}")
    return EXIT_OK
