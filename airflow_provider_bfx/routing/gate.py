"""The gate: the first thing a routed task does, before any of its own work (``pre_execute``).

It asks the catalog what this try must do and makes Airflow do it:

* **run**: ``context["bfx"]`` is the execution handle and the task runs;
* **skip** (already completed in this lineage, or package disabled): the recorded return value
  is pushed as this try's XCom and the task ends *skipped* with the token line as the reason.
  A task whose output an ``.expand()`` maps over is instead served as *success* with that
  output, because Airflow never expands a mapped task over a skipped producer (decision 0043);
* **refuse** (already running elsewhere, or a changed definition under ``FAIL``): the task fails
  with the catalog's message and Airflow's retries do not apply.

Before that it adopts Airflow's outcome of earlier runs the catalog did not hear
(:mod:`.evidence`), and it restores ``all_success``: routing turned the default ``all_success`` into
``none_failed`` so that a task downstream of a skipped-as-completed task still runs; a task
whose upstream was skipped for any other reason (a branch, the task's own logic, an upstream
skipped in turn) is skipped here, ``[BFX_UPSTREAM_SKIPPED]``.

No SQL here: every read and write goes through :class:`CatalogStore`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import (
    CheckpointType,
    ExecutionStatus,
    Token,
    format_token,
)
from airflow_provider_bfx.catalog.errors import CatalogMisconfiguredError
from airflow_provider_bfx.catalog.machine import Run
from airflow_provider_bfx.catalog.payload import UNRECORDED
from airflow_provider_bfx.catalog.store import (
    BatchSpec,
    CatalogStore,
    CatalogUnavailableError,
    TaskSpec,
    TaskStarted,
    default_lease_owner,
)
from airflow_provider_bfx.routing import fingerprint, install
from airflow_provider_bfx.routing.catalog import get_store
from airflow_provider_bfx.routing.evidence import adopt_airflow_outcomes, state_key
from airflow_provider_bfx.routing.handle import RETURN_VALUE_NODE, ExecutionHandle
from airflow_provider_bfx.routing.lease import LeaseKeeper
from airflow_provider_bfx.routing.records import GateRecord, Outcome, TryKey, remember
from airflow_provider_bfx.routing.run_conf import PARENT_KEY, RunConf, RunConfError, parse_run_conf
from airflow_provider_bfx.routing.settings import (
    BfxSettings,
    BfxSettingsError,
    OnCatalogUnavailable,
    settings_for,
)

log = logging.getLogger("airflow_provider_bfx.routing")

#: Not one of the contract's catalog tokens: Airflow's own all_success decision, restored.
UPSTREAM_SKIPPED = "BFX_UPSTREAM_SKIPPED"
#: Not one of the contract's tokens either: a catalog that answers with an error (decision 0090).
CATALOG_MISCONFIGURED = "BFX_CATALOG_MISCONFIGURED"
#: Context key through which the gate hands a replayed output to the execute wrapper.
REPLAY_KEY = "bfx_replay"
_TRIGGER_MODULE = "airflow.providers.standard.operators.trigger_dagrun"


class BfxCatalogUnavailable(RuntimeError):
    """The catalog could not be reached at a task's start. A plain exception on purpose:
    Airflow's retries apply, and a later try may find the catalog back (decision 0044)."""


class BfxRoutingError(RuntimeError):
    """The routing cannot decide for this try (bad settings, corrupt rows, missing schema)."""


class BfxRunConfError(BfxRoutingError, AirflowFailException):
    """A ``bfx`` entry of ``dag_run.conf`` that is not understood. Airflow's retries do not
    apply: a run's conf never changes, so every retry would fail the same way."""


# -- what the gate needs to know about a task's definition, computed once per process ---------


@dataclass(frozen=True)
class TaskFacts:
    operator_fingerprint: str
    decides_shape: bool
    feeds_expand: bool  # an unexpanded mapped task maps over this task's output
    multiple_outputs: bool


_facts: dict[int, tuple[Any, TaskFacts]] = {}
_facts_lock = threading.Lock()


def task_facts(parse_task: Any) -> TaskFacts:
    """Facts of the parse-time task object (never the rendered copy the runner executes)."""
    with _facts_lock:
        cached = _facts.get(id(parse_task))
        if cached is not None and cached[0] is parse_task:
            return cached[1]
    from airflow.sdk import SkipMixin

    mapped = install.is_mapped(parse_task)
    facts = TaskFacts(
        operator_fingerprint=fingerprint.operator_fingerprint(parse_task),
        decides_shape=issubclass(fingerprint.operator_class(parse_task), SkipMixin),
        feeds_expand=not mapped and next(parse_task.iter_mapped_dependants(), None) is not None,
        multiple_outputs=bool(getattr(parse_task, "multiple_outputs", False)),
    )
    with _facts_lock:
        if len(_facts) > 4096:
            _facts.clear()
        _facts[id(parse_task)] = (parse_task, facts)
    return facts


def parse_time_task(context: Mapping[str, Any]) -> Any:
    ti = context["ti"]
    dag = context.get("dag") or getattr(ti.task, "dag", None)
    task_dict = getattr(dag, "task_dict", None) or {}
    return task_dict.get(ti.task_id, ti.task)


# -- the gate ----------------------------------------------------------------------------------


def gate(context: Any) -> None:
    """Decide this try through the catalog (see the module docstring). Raises to skip or fail."""
    ti = context["ti"]
    key = TryKey.of(ti)
    dag = context.get("dag") or ti.task.dag
    try:
        settings = settings_for(dag)
    except BfxSettingsError as exc:
        remember(key, GateRecord(Outcome.REFUSED))
        raise BfxRoutingError(f"bfx routing of {key.dag_id}.{key.task_id}: {exc}") from exc
    try:  # before the catalog is touched: a run's instruction that is not understood
        run_conf = parse_run_conf(getattr(context.get("dag_run"), "conf", None))
    except RunConfError as exc:
        remember(key, GateRecord(Outcome.REFUSED))
        raise BfxRunConfError(f"bfx routing of {key.dag_id}.{key.task_id}: {exc}") from exc

    parse_task = parse_time_task(context)
    try:
        store = get_store(settings.catalog_conn_id)
        adopt_airflow_outcomes(ti, store, key.dag_id, key.run_id)
        if install.all_success_restored(key.dag_id, key.task_id):
            _require_upstreams(ti, store, key)
        facts = task_facts(parse_task)
        spec = task_spec(context, parse_task, facts, settings, run_conf)
        started = store.start_task(spec)
    except CatalogUnavailableError as exc:
        _catalog_unavailable(key, settings, exc)
        return
    except CatalogMisconfiguredError as exc:
        _catalog_misconfigured(key, settings, exc)
    except (AirflowSkipException, AirflowFailException):
        raise
    except Exception:
        # Corrupt rows, a missing schema, an unknown connection: fail before any work, saying
        # why (the exception's own message names the row or the command that fixes it).
        remember(key, GateRecord(Outcome.REFUSED))
        raise

    if started.run is Run.REFUSE:
        remember(key, GateRecord(Outcome.REFUSED))
        raise AirflowFailException(started.failure_message or _line(started, key))
    if started.run is Run.SKIP:
        _skip(context, key, store, started, facts)
        return
    handle = ExecutionHandle.of_start(started, store, spec)
    assert spec.lease_owner is not None
    handle.lease = LeaseKeeper(
        store,
        started.execution_id,
        spec.lease_owner,
        spec.lease_seconds,
        airflow_state=lambda: getattr(ti, "state", None),
    ).start()
    context["bfx"] = handle
    nest_triggered_run(ti.task, started.execution_id)
    remember(key, GateRecord(Outcome.RUN, handle))


# -- building the request ----------------------------------------------------------------------


def _naive_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def nest_triggered_run(task: Any, execution_id: int) -> None:
    """A routed ``TriggerDagRunOperator`` about to run: its rendered ``conf`` gets
    ``{"bfx": {"parent_execution_id": execution_id}}`` (merged, the user's keys kept), so that
    the run it triggers starts a child batch of this execution (DESIGN.md §5)."""
    module = sys.modules.get(_TRIGGER_MODULE)
    trigger_class = getattr(module, "TriggerDagRunOperator", None)
    if trigger_class is None or not isinstance(task, trigger_class):
        return  # not imported in this process, so this task cannot be one
    conf = task.conf
    if isinstance(conf, str) and conf.strip():
        try:
            conf = json.loads(conf)
        except ValueError:
            return  # the operator itself refuses a conf that is not JSON
    if conf is None or conf == "":
        conf = {}
    if not isinstance(conf, Mapping):
        return  # the operator itself refuses it
    bfx = conf.get("bfx")
    bfx = dict(bfx) if isinstance(bfx, Mapping) else {}
    bfx[PARENT_KEY] = execution_id
    task.conf = {**conf, "bfx": bfx}
    log.info(
        "[bfx] nested batch trigger task=%s trigger_dag_id=%s parent_execution_id=%s",
        getattr(task, "task_id", None),
        getattr(task, "trigger_dag_id", None),
        execution_id,
    )


def mapped_input(parse_task: Any, context: Mapping[str, Any]) -> dict[str, Any]:
    """The mapped input of this mapped task instance, ``{argument: value}``, resolved the way
    the task runner resolves it (from the literal list, or the upstream's XCom)."""
    attr = getattr(parse_task, "_expand_input_attr", None)
    expand_input = getattr(parse_task, attr, None) if attr else None
    if expand_input is not None and hasattr(expand_input, "resolve"):
        resolved, _ = expand_input.resolve(context)
        return dict(resolved)
    # A task inside a mapped task group: its arguments reference the group's input.
    runtime = context["ti"].task
    fields = sorted(getattr(runtime, "template_fields", ()) or ())
    return {name: getattr(runtime, name, None) for name in fields}


def task_spec(
    context: Mapping[str, Any],
    parse_task: Any,
    facts: TaskFacts,
    settings: BfxSettings,
    run_conf: RunConf,
) -> TaskSpec:
    ti = context["ti"]
    map_index = keys.UNMAPPED if ti.map_index is None else int(ti.map_index)
    batch = BatchSpec(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        logical_date=_naive_utc(context.get("logical_date")),
        full_rerun=run_conf.full_rerun,
        resume_scope=settings.resume_scope,
        parent_execution_id=run_conf.parent_execution_id,
        retry_limit=settings.dag_retry_limit,
        default_retry_limit=settings.retry_limit,
        default_max_resume_age=settings.max_resume_age,
    )
    item = keys.NO_ITEM
    if map_index != keys.UNMAPPED:
        item = fingerprint.item_fingerprint(mapped_input(parse_task, context))
    return TaskSpec(
        batch=batch,
        task_id=ti.task_id,
        map_index=map_index,
        try_number=int(ti.try_number or 1),
        item_fingerprint=item,
        operator_fingerprint=facts.operator_fingerprint,
        policy=settings.version_mismatch_policy,
        decides_shape=facts.decides_shape,
        lease_owner=default_lease_owner(),
        lease_seconds=settings.lease_duration,
    )


# -- all_success, restored ---------------------------------------------------------------------


def _latest_task_rows(store: CatalogStore, dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
    """The latest catalog row of each (task_id, map_index) of one DAG run."""
    latest: dict[tuple[str, int], Any] = {}
    for row in store.executions(dag_id, run_id):
        if row.TaskId is None:
            continue
        slot = (row.TaskId, int(row.MapIndex))
        if slot not in latest or row.ExecutionID > latest[slot].ExecutionID:
            latest[slot] = row
    return latest


def _gate_skipped(row: Any) -> bool:
    """A C row the GATE wrote without running anything (completed, or package disabled). A
    skip the task's own logic raised is also C, but its row ran under a lease: it does not
    count (decision 0045)."""
    return bool(row.ExecutionStatus == ExecutionStatus.SKIPPED.value and row.LeaseOwner is None)


def _upstreams_fine_in_catalog(latest: dict[tuple[str, int], Any], upstream: set[str]) -> bool:
    """True when the catalog alone shows that no upstream was skipped for another reason than
    "already completed": each upstream is unmapped and its latest row in this run succeeded
    (S) or was skipped by the gate. Then Airflow need not be asked (decision 0052)."""
    found: dict[str, Any] = {}
    for (task_id, map_index), row in latest.items():
        if task_id in upstream:
            if map_index != keys.UNMAPPED:
                return False  # how many instances there are is Airflow's to say
            found[task_id] = row
    return found.keys() == upstream and all(
        row.ExecutionStatus == ExecutionStatus.SUCCEEDED.value or _gate_skipped(row)
        for row in found.values()
    )


def _require_upstreams(ti: Any, store: CatalogStore, key: TryKey) -> None:
    upstream = set(getattr(ti.task, "upstream_task_ids", ()) or ())
    if not upstream:
        return
    latest = _latest_task_rows(store, key.dag_id, key.run_id)
    if _upstreams_fine_in_catalog(latest, upstream):
        return
    states = ti.get_task_states(dag_id=key.dag_id, run_ids=[key.run_id], task_ids=sorted(upstream))
    skipped = sorted(k for k, state in (states.get(key.run_id) or {}).items() if state == "skipped")
    if not skipped:
        return
    completed = {slot for slot, row in latest.items() if _gate_skipped(row)}
    other = [k for k in skipped if state_key(k, upstream) not in completed]
    if not other:
        return
    line = format_token(
        UPSTREAM_SKIPPED,
        dag=key.dag_id,
        task=key.task_id,
        map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
        upstream=",".join(other),
    )
    log.info("%s", line)
    remember(key, GateRecord(Outcome.SKIPPED))
    raise AirflowSkipException(line)


# -- skip, replay ------------------------------------------------------------------------------


def recorded_output(store: CatalogStore, started: TaskStarted) -> tuple[bool, Any]:
    found = store.read_checkpoints(started.scope_key, CheckpointType.NODE_OUTPUT, RETURN_VALUE_NODE)
    if not found:
        return False, None
    return True, found[-1].payload


def _skip(
    context: Any, key: TryKey, store: CatalogStore, started: TaskStarted, facts: TaskFacts
) -> None:
    ti = context["ti"]
    reason = _line(started, key)
    has_output, output = recorded_output(store, started)
    unrecorded = has_output and output is UNRECORDED  # it returned a value JSON cannot hold
    if facts.feeds_expand or unrecorded:
        if has_output and not unrecorded and install.replays_output(parse_time_task(context)):
            context[REPLAY_KEY] = output
            remember(key, GateRecord(Outcome.REPLAYED))
            log.info("%s served=success (an .expand() maps over this output)", reason)
            return
        # No recorded output to serve (not JSON, never recorded, or the wrapper is not
        # installed): run it again so that downstream gets the real value, never a missing
        # one (decisions 0043, 0091). Its row stays C.
        log.warning(
            "%s no recorded output to serve to %s: running it again",
            reason,
            "the .expand() downstream" if not unrecorded else "downstream (it was not JSON)",
        )
        remember(
            key,
            GateRecord(
                Outcome.RERUN_FOR_OUTPUT,
                ExecutionHandle.of_start(started, store),
            ),
        )
        return
    if has_output and output is not None:
        ti.xcom_push("return_value", output)
        if facts.multiple_outputs and isinstance(output, Mapping):
            for name, value in output.items():
                ti.xcom_push(str(name), value)
    remember(key, GateRecord(Outcome.SKIPPED))
    raise AirflowSkipException(reason)


def _line(started: TaskStarted, key: TryKey) -> str:
    """The token line of the decision (the store already logged it): the skip/refuse reason."""
    wanted = (
        f"[{Token.SKIP_COMPLETED.value}]",
        f"[{Token.PACKAGE_DISABLED.value}]",
        f"[{Token.ALREADY_RUNNING.value}]",
        f"[{Token.FINGERPRINT_MISMATCH.value}]",
    )
    for line in reversed(started.log_lines):
        if line.startswith(wanted):
            return line
    return f"[bfx] task={key.task_id} execution_id={started.execution_id} {started.reason}"


# -- catalog down -------------------------------------------------------------------------------


def _catalog_unavailable(key: TryKey, settings: BfxSettings, exc: Exception) -> None:
    run_unrouted = settings.on_catalog_unavailable is OnCatalogUnavailable.RUN
    line = format_token(
        Token.CATALOG_UNAVAILABLE,
        dag=key.dag_id,
        task=key.task_id,
        map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
        on_catalog_unavailable=settings.on_catalog_unavailable.value,
        action="run_unrouted" if run_unrouted else "fail",
        error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    )
    if run_unrouted:
        log.warning("%s", line)
        remember(key, GateRecord(Outcome.UNROUTED))
        return
    log.error("%s", line)
    remember(key, GateRecord(Outcome.REFUSED))
    raise BfxCatalogUnavailable(line) from exc


def _catalog_misconfigured(
    key: TryKey, settings: BfxSettings, exc: CatalogMisconfiguredError
) -> NoReturn:
    """The catalog answered with an error a person must fix (wrong password, unknown database,
    missing permission, read-only, missing or outdated schema): fail before any work, whatever
    ``on_catalog_unavailable`` says. Running unrouted would redo finished work, and Airflow's
    retries would only repeat a failed login (decision 0090)."""
    error = exc.naming(settings.catalog_conn_id)
    line = format_token(
        CATALOG_MISCONFIGURED,
        dag=key.dag_id,
        task=key.task_id,
        map_index=key.map_index if key.map_index != keys.UNMAPPED else None,
        catalog_conn_id=settings.catalog_conn_id,
        action="fail",
    )
    log.error("%s %s", line, error)
    remember(key, GateRecord(Outcome.REFUSED))
    raise AirflowFailException(
        f"{line}: nothing ran, the catalog is misconfigured ([bfx] on_catalog_unavailable"
        f" covers only a catalog that cannot be reached): {error}"
    ) from exc
