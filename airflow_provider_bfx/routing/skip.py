"""Skip and replay: a try the catalog says is already completed ends *skipped* with its
recorded output pushed, or is served as *success* with that output when an ``.expand()`` maps
over it (decision 0043); without a recorded output to serve it runs again (0091)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_bfx.catalog.codes import CheckpointType, Token
from airflow_provider_bfx.catalog.payload import UNRECORDED
from airflow_provider_bfx.catalog.results import TaskStarted
from airflow_provider_bfx.catalog.store import CatalogStore
from airflow_provider_bfx.routing.handle import RETURN_VALUE_NODE, ExecutionHandle
from airflow_provider_bfx.routing.marks import REPLAY_KEY, replays_output
from airflow_provider_bfx.routing.records import GateRecord, Outcome, TryKey, remember
from airflow_provider_bfx.routing.request import TaskFacts, parse_time_task

log = logging.getLogger("airflow_provider_bfx.routing")


def recorded_output(store: CatalogStore, started: TaskStarted) -> tuple[bool, Any]:
    found = store.read_checkpoints(started.scope_key, CheckpointType.NODE_OUTPUT, RETURN_VALUE_NODE)
    if not found:
        return False, None
    return True, found[-1].payload


def serve_skip(
    context: Any, key: TryKey, store: CatalogStore, started: TaskStarted, facts: TaskFacts
) -> None:
    ti = context["ti"]
    reason = decision_line(started, key)
    has_output, output = recorded_output(store, started)
    unrecorded = has_output and output is UNRECORDED  # it returned a value JSON cannot hold
    if facts.feeds_expand or unrecorded:
        if has_output and not unrecorded and replays_output(parse_time_task(context)):
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


def decision_line(started: TaskStarted, key: TryKey) -> str:
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
