"""The gate: the first thing a routed task does, before any of its own work (``pre_execute``).

It asks the catalog what this try must do and makes Airflow do it:

* **run**: ``context["bfx"]`` is the execution handle and the task runs;
* **skip** (already completed in this lineage, or package disabled): the recorded return value
  is pushed as this try's XCom and the task ends *skipped* with the token line as the reason.
  A task whose output an ``.expand()`` maps over is instead served as *success* with that
  output, because Airflow never expands a mapped task over a skipped producer (decision 0043);
* **refuse** (already running elsewhere, or a changed definition under ``FAIL``): the task fails
  with the catalog's message and Airflow's retries do not apply.

The start that creates a resumed run's batch also skips the run's other completed tasks ahead,
so that they need no task process of their own (:mod:`.skip_ahead`, decision 0106).

First of all it carries the "Recovery" link of a mapped task over to the operator this try runs
(Airflow's ``unmap`` drops it: :func:`~airflow_provider_bfx.plugins.links.carry_recovery_link`),
so that every routed try stores its link, whatever the gate decides. Then it adopts Airflow's
outcome of earlier runs the catalog did not hear (:mod:`.evidence`), and it restores
``all_success``: routing turned the default ``all_success`` into ``none_failed`` so that a task
downstream of a skipped-as-completed task still runs; a task whose upstream was skipped for any
other reason (a branch, the task's own logic, an upstream skipped in turn) is skipped here,
``[BFX_UPSTREAM_SKIPPED]``.

Each concern has its module: the request (:mod:`.request`), ``all_success`` restored
(:mod:`.upstream`), skip and replay (:mod:`.skip`), nesting (:mod:`.nesting`), a catalog down or
misconfigured (:mod:`.unavailable`); this module is the order they run in. Their public names
stay importable from here.

No SQL here: every read and write goes through :class:`CatalogStore`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_bfx.catalog.errors import CatalogMisconfiguredError, CatalogUnavailableError
from airflow_provider_bfx.catalog.machine import Run
from airflow_provider_bfx.exceptions import BfxError
from airflow_provider_bfx.plugins.links import carry_recovery_link
from airflow_provider_bfx.routing.catalog import get_store
from airflow_provider_bfx.routing.evidence import adopt_airflow_outcomes
from airflow_provider_bfx.routing.handle import ExecutionHandle
from airflow_provider_bfx.routing.lease import LeaseKeeper
from airflow_provider_bfx.routing.marks import REPLAY_KEY as REPLAY_KEY
from airflow_provider_bfx.routing.marks import all_success_restored
from airflow_provider_bfx.routing.nesting import nest_triggered_run as nest_triggered_run
from airflow_provider_bfx.routing.records import GateRecord, Outcome, TryKey, remember
from airflow_provider_bfx.routing.request import TaskFacts as TaskFacts
from airflow_provider_bfx.routing.request import mapped_input as mapped_input
from airflow_provider_bfx.routing.request import parse_time_task as parse_time_task
from airflow_provider_bfx.routing.request import task_facts as task_facts
from airflow_provider_bfx.routing.request import task_spec as task_spec
from airflow_provider_bfx.routing.run_conf import RunConfError, parse_run_conf
from airflow_provider_bfx.routing.settings import BfxSettingsError, settings_for
from airflow_provider_bfx.routing.skip import decision_line, serve_skip
from airflow_provider_bfx.routing.skip import recorded_output as recorded_output
from airflow_provider_bfx.routing.skip_ahead import skip_ahead
from airflow_provider_bfx.routing.unavailable import CATALOG_MISCONFIGURED as CATALOG_MISCONFIGURED
from airflow_provider_bfx.routing.unavailable import BfxCatalogUnavailable as BfxCatalogUnavailable
from airflow_provider_bfx.routing.unavailable import catalog_misconfigured, catalog_unavailable
from airflow_provider_bfx.routing.upstream import UPSTREAM_SKIPPED as UPSTREAM_SKIPPED
from airflow_provider_bfx.routing.upstream import require_upstreams

log = logging.getLogger("airflow_provider_bfx.routing")


class BfxRoutingError(BfxError, RuntimeError):
    """The routing cannot decide for this try (bad settings, corrupt rows, missing schema)."""


class BfxRunConfError(BfxRoutingError, AirflowFailException):
    """A ``bfx`` entry of ``dag_run.conf`` that is not understood. Airflow's retries do not
    apply: a run's conf never changes, so every retry would fail the same way."""


def gate(context: Any) -> None:
    """Decide this try through the catalog (see the module docstring). Raises to skip or fail."""
    ti = context["ti"]
    parse_task = parse_time_task(context)
    # First, so that a try the gate skips or fails stores the link too (a mapped task's).
    carry_recovery_link(parse_task, ti.task)
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

    try:
        store = get_store(settings.catalog_conn_id)
        facts = task_facts(parse_task)
        spec = task_spec(context, parse_task, facts, settings, run_conf)
        item = spec.item_fingerprint if spec.map_index >= 0 else None
        if adopt_airflow_outcomes(ti, store, key.dag_id, key.run_id, key.task_id, item):
            spec = replace(spec, read_first=True)  # not a first start (decision 0121)
        if all_success_restored(key.dag_id, key.task_id):
            require_upstreams(ti, store, key)
        started = store.start_task(spec)
        skip_ahead(context, store, spec, started, settings)
    except CatalogUnavailableError as exc:
        catalog_unavailable(key, settings, exc)
        return
    except CatalogMisconfiguredError as exc:
        catalog_misconfigured(key, settings, exc)
    except (AirflowSkipException, AirflowFailException):
        raise
    except Exception:
        # Corrupt rows, a missing schema, an unknown connection: fail before any work, saying
        # why (the exception's own message names the row or the command that fixes it).
        remember(key, GateRecord(Outcome.REFUSED))
        raise

    if started.run is Run.REFUSE:
        remember(key, GateRecord(Outcome.REFUSED))
        raise AirflowFailException(started.failure_message or decision_line(started, key))
    if started.run is Run.SKIP:
        serve_skip(context, key, store, started, facts)
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
