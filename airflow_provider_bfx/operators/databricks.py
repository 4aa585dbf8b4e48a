"""``BfxDatabricksOperator``: a copy step, then a compute step on Databricks (DESIGN.md §6).

The copy step is a callable ``copy(context, audit_id)`` that lands the data and returns
metadata (decision 0060). Once it returns, the operator writes the copy ``NODE_OUTPUT``
checkpoint (NodeKey :data:`~airflow_provider_bfx.catalog.keys.COPY_NODE`), so that a failure of
the compute step leaves ``NextLoadStatus = D`` and the next execution is a compute-only restart:
the copy is skipped and the compute step receives the audit ID of the data already landed.

The compute step is an existing job (``job_id``: ``jobs/run-now``, the audit ID in
``job_parameters``) or a one-time run (``json``: ``jobs/runs/submit``, the audit ID in every
notebook task's ``base_parameters``), through the official provider's ``DatabricksHook``. The
run is recorded in a ``databricks_run`` checkpoint right after it is submitted; a later try of
the same lineage reattaches to it while it runs, accepts it if it succeeded and submits a new run
only if it failed (decision 0061).
"""

from __future__ import annotations

import copy as copy_module
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.databricks.hooks.databricks import DatabricksHook, RunState
from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.catalog.codes import ExecutionStatus, Token, format_token
from airflow_provider_bfx.exceptions import BfxError

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_bfx.routing.handle import ExecutionHandle

log = logging.getLogger("airflow_provider_bfx.operators.databricks")

#: NodeKey of the checkpoint recording the Databricks run submitted for the landed data.
RUN_NODE = "databricks_run"
#: XCom keys, the same as the official Databricks operators'.
XCOM_RUN_ID_KEY = "run_id"
XCOM_RUN_PAGE_URL_KEY = "run_page_url"
#: Token of the log lines saying a recorded run was reused (reattached or accepted).
REATTACH_TOKEN = "BFX_DATABRICKS_REATTACH"

CopyCallable = Callable[[Any, "int | None"], "Mapping[str, Any] | None"]


class BfxDatabricksRunFailed(BfxError, RuntimeError):
    """The compute run ended in a state other than SUCCESS."""


class BfxDatabricksRunLink(BaseOperatorLink):
    """The page of the Databricks run this task submitted or reattached to."""

    name = "See Databricks Run"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        url = XCom.get_value(key=XCOM_RUN_PAGE_URL_KEY, ti_key=ti_key)
        return str(url) if url else ""


def row_counts(metadata: Mapping[str, Any] | None) -> list[tuple[str, str, int]]:
    """``(object, count type, rows)`` from the copy metadata (decision 0060).

    ``{"rows": {"dw.customer": 1200}}`` is an ``Insert`` count;
    ``{"rows": {"dw.customer": {"Insert": 1200, "Update": 7}}}`` names the count types."""
    if not metadata:
        return []
    rows = metadata.get("rows")
    if rows is None:
        return []
    if not isinstance(rows, Mapping):
        raise TypeError(f"copy metadata 'rows' must be a mapping of object -> count, got {rows!r}")
    out: list[tuple[str, str, int]] = []
    for name, value in rows.items():
        if isinstance(value, Mapping):
            out.extend((str(name), str(kind), int(n)) for kind, n in value.items())
        else:
            out.append((str(name), "Insert", int(value)))
    return out


class BfxDatabricksOperator(BaseOperator):
    """Copy, then compute on Databricks, restartable from the compute step.

    :param copy: ``copy(context, audit_id)`` lands the data and returns metadata (a JSON-able
        mapping; ``{"rows": {...}}`` becomes row counts) or ``None``. Not called on a
        compute-only restart. ``None``: no copy step (a failure then reruns everything).
    :param job_id: an existing job to start with ``run-now``; the audit ID goes into
        ``job_parameters[audit_id_param]``.
    :param json: the body of a one-time ``runs/submit``; the audit ID goes into
        ``base_parameters[audit_id_param]`` of each notebook task.
    :param job_parameters: more job parameters for ``run-now``.
    :param audit_id_param: the parameter name the job reads the audit ID from.
    :param polling_period_seconds: seconds between two polls of the run's state.
    """

    template_fields: Sequence[str] = ("json", "job_id", "job_parameters", "databricks_conn_id")
    template_fields_renderers = {"json": "json", "job_parameters": "json"}
    operator_extra_links = (BfxDatabricksRunLink(),)
    ui_color = "#1CB1C2"

    def __init__(
        self,
        *,
        copy: CopyCallable | None,
        job_id: int | str | None = None,
        json: dict[str, Any] | None = None,
        job_parameters: dict[str, Any] | None = None,
        databricks_conn_id: str = "databricks_default",
        audit_id_param: str = "audit_id",
        polling_period_seconds: float = 30,
        databricks_retry_limit: int = 3,
        databricks_retry_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (job_id is None) == (json is None):
            raise ValueError(
                f"{self.task_id}: give exactly one of job_id (run-now) or json (one-time run)"
            )
        if copy is not None and not callable(copy):
            raise TypeError(f"{self.task_id}: copy must be callable(context, audit_id) or None")
        self.copy = copy
        self.job_id = job_id
        self.json = json
        self.job_parameters = job_parameters
        self.databricks_conn_id = databricks_conn_id
        self.audit_id_param = audit_id_param
        self.polling_period_seconds = polling_period_seconds
        self.databricks_retry_limit = databricks_retry_limit
        self.databricks_retry_delay = databricks_retry_delay
        self.run_id: int | None = None

    @cached_property
    def hook(self) -> DatabricksHook:
        return DatabricksHook(
            self.databricks_conn_id,
            retry_limit=self.databricks_retry_limit,
            retry_delay=self.databricks_retry_delay,
            caller="BfxDatabricksOperator",
        )

    # -- the flow -------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        handle: ExecutionHandle | None = context.get("bfx")  # type: ignore[assignment]
        metadata: Mapping[str, Any] | None = None
        if handle is None:
            log.warning(
                "%s: this task is not routed through the bfx catalog: running copy and compute"
                " with audit_id=None, no checkpoints, no compute-only restart",
                self.task_id,
            )
            audit_id = None
            metadata = self._copy(context, None)
        elif handle.status is ExecutionStatus.COMPUTE_ONLY:
            audit_id = handle.audit_id
            landed = handle.get_checkpoint(keys.COPY_NODE) or {}
            log.info(
                "%s",
                format_token(
                    Token.COMPUTE_ONLY_RESTART,
                    task=self.task_id,
                    execution_id=handle.execution_id,
                    audit_id=audit_id,
                    copy="skipped",
                    landed_audit_id=landed.get("audit_id"),
                    databricks=self._target(),
                ),
            )
            metadata = landed.get("metadata")
        else:
            audit_id = handle.audit_id
            metadata = self._copy(context, audit_id)
            handle.checkpoint(
                keys.COPY_NODE, {"audit_id": audit_id, "metadata": dict(metadata or {})}
            )
            for name, kind, rows in row_counts(metadata):
                handle.log_row_count(name, kind, rows)
        result = self._compute(context, handle, audit_id)
        result["copy"] = dict(metadata or {})
        return result

    def _copy(self, context: Context, audit_id: int | None) -> Mapping[str, Any] | None:
        if self.copy is None:
            return None
        log.info("%s: copy step, audit_id=%s", self.task_id, audit_id)
        metadata = self.copy(context, audit_id)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(
                f"{self.task_id}: copy returned {type(metadata).__name__}; return a mapping"
                " (decision 0060) or None"
            )
        row_counts(metadata)  # validate the shape before anything is recorded
        return metadata

    def _target(self) -> str:
        return f"job:{self.job_id}" if self.job_id is not None else "runs/submit"

    def _request(self, audit_id: int | None) -> dict[str, Any]:
        """The run-now / runs/submit body, with the audit ID as a parameter."""
        value = "" if audit_id is None else str(audit_id)
        if self.job_id is not None:
            params = {**(self.job_parameters or {}), self.audit_id_param: value}
            return {"job_id": int(self.job_id), "job_parameters": params}
        body = copy_module.deepcopy(self.json or {})
        notebooks = [t.get("notebook_task") for t in body.get("tasks") or []]
        notebooks.append(body.get("notebook_task"))  # the single-task (2.0) form
        for notebook in notebooks:
            if isinstance(notebook, dict):
                notebook.setdefault("base_parameters", {})[self.audit_id_param] = value
        return body

    def _compute(
        self, context: Context, handle: ExecutionHandle | None, audit_id: int | None
    ) -> dict[str, Any]:
        request = self._request(audit_id)
        spec = keys.fingerprint(request)
        recorded = handle.get_checkpoint(RUN_NODE) if handle is not None else None
        run_id: int | None = None
        previous: int | None = None
        if isinstance(recorded, Mapping) and recorded.get("audit_id") == audit_id:
            previous = int(recorded["run_id"])
            if recorded.get("spec") != spec:
                log.info(
                    "%s: recorded Databricks run %s was for another request; submitting anew",
                    self.task_id,
                    previous,
                )
            else:
                state = self.hook.get_run_state(previous)
                if not state.is_terminal:
                    run_id = previous
                    log.info(
                        "%s",
                        format_token(
                            REATTACH_TOKEN,
                            run_id=run_id,
                            audit_id=audit_id,
                            state=state.life_cycle_state,
                            action="reattach",
                        ),
                    )
                elif state.is_successful:
                    log.info(
                        "%s",
                        format_token(
                            REATTACH_TOKEN,
                            run_id=previous,
                            audit_id=audit_id,
                            state=f"{state.life_cycle_state}/{state.result_state}",
                            action="done",
                        ),
                    )
                    return self._finish(context, previous, audit_id, state)
                else:
                    log.info(
                        "%s: recorded Databricks run %s ended %s/%s; submitting a new run",
                        self.task_id,
                        previous,
                        state.life_cycle_state,
                        state.result_state,
                    )
        if run_id is None:
            run_id = self._submit(handle, request, audit_id, spec, previous)
        self.run_id = run_id
        url = self.hook.get_run_page_url(run_id)
        log.info("%s: Databricks run %s: %s", self.task_id, run_id, url)
        context["ti"].xcom_push(key=XCOM_RUN_ID_KEY, value=run_id)
        context["ti"].xcom_push(key=XCOM_RUN_PAGE_URL_KEY, value=url)
        state = self._poll(run_id)
        if not state.is_successful:
            raise BfxDatabricksRunFailed(
                f"Databricks run {run_id} ended {state.life_cycle_state}/{state.result_state}:"
                f" {state.state_message} ({url})"
            )
        return self._finish(context, run_id, audit_id, state, url)

    def _submit(
        self,
        handle: ExecutionHandle | None,
        request: dict[str, Any],
        audit_id: int | None,
        spec: str,
        previous: int | None,
    ) -> int:
        body = dict(request)
        if handle is not None and "idempotency_token" not in body:
            # The same token for the same (scope, audit ID, previous run): a try that submitted
            # but died before recording the run gets the existing run back (decision 0061).
            body["idempotency_token"] = keys.fingerprint(
                [handle.scope_key, audit_id, previous, spec]
            )[:64]
        submit = self.hook.run_now if self.job_id is not None else self.hook.submit_run
        run_id = submit(body)
        log.info(
            "%s: submitted Databricks run %s (%s), %s=%s",
            self.task_id,
            run_id,
            self._target(),
            self.audit_id_param,
            audit_id,
        )
        if handle is not None:
            handle.checkpoint(
                RUN_NODE,
                {
                    "run_id": run_id,
                    "audit_id": audit_id,
                    "spec": spec,
                    "execution_id": handle.execution_id,
                },
            )
        return int(run_id)

    def _poll(self, run_id: int) -> RunState:
        while True:
            state = self.hook.get_run_state(run_id)
            if state.is_terminal:
                return state
            log.info("%s: Databricks run %s is %s", self.task_id, run_id, state.life_cycle_state)
            time.sleep(self.polling_period_seconds)

    def _finish(
        self,
        context: Context,
        run_id: int,
        audit_id: int | None,
        state: RunState,
        url: str | None = None,
    ) -> dict[str, Any]:
        if url is None:
            url = self.hook.get_run_page_url(run_id)
            context["ti"].xcom_push(key=XCOM_RUN_ID_KEY, value=run_id)
            context["ti"].xcom_push(key=XCOM_RUN_PAGE_URL_KEY, value=url)
        log.info("%s: Databricks run %s succeeded: %s", self.task_id, run_id, url)
        return {
            "run_id": run_id,
            "audit_id": audit_id,
            "run_page_url": url,
            "result_state": state.result_state,
        }

    def on_kill(self) -> None:
        """A try killed on purpose (marked failed, timed out) cancels its run; a worker that
        dies does not get here, and the next try reattaches instead."""
        if self.run_id is not None:
            log.info("%s: cancelling Databricks run %s", self.task_id, self.run_id)
            self.hook.cancel_run(self.run_id)
