"""What routing marks on a task at parse time and reads back when the task runs.

Shared by :mod:`.install` (which marks) and the gate (which reads), so that neither imports the
other: :mod:`airflow_provider_bfx.callbacks` → gate → here, and install → callbacks, without a
cycle (``scripts/import-graph``). Imports nothing of the provider and nothing of Airflow.
"""

from __future__ import annotations

import threading
from typing import Any

ALL_SUCCESS = "all_success"
NONE_FAILED = "none_failed"

#: Context key through which the gate hands a replayed output to the execute wrapper.
REPLAY_KEY = "bfx_replay"
#: Attribute set on an ``execute`` wrapped so that the gate can serve a replayed output.
GATED_MARK = "_bfx_gated_execute"

#: Attribute set on the hooks :mod:`.install` chains in front of (or after) the author's own.
CHAIN_MARK = "_bfx_chain"
#: Where the gate's own ``pre_execute`` lives (installed unchained when the task had none).
_CALLBACKS_MODULE = "airflow_provider_bfx.callbacks"

_converted: set[tuple[str, str]] = set()
_converted_lock = threading.Lock()


def is_mapped(task: Any) -> bool:
    """An unexpanded mapped task (a ``MappedOperator``): the one task object that carries
    ``partial_kwargs``, where its hooks live. A rendered task instance's task is never one."""
    return hasattr(task, "partial_kwargs") and hasattr(task, "operator_class")


def is_routed(task: Any) -> bool:
    """Whether the gate is installed on this unmapped task (its ``pre_execute`` is ours)."""
    hook = getattr(task, "_pre_execute_hook", None)
    if hook is None:
        return False
    return getattr(hook, "__module__", None) == _CALLBACKS_MODULE or bool(
        getattr(hook, CHAIN_MARK, False)
    )


def all_success_restored(dag_id: str, task_id: str) -> bool:
    """Whether routing turned this task's ``all_success`` into ``none_failed``."""
    with _converted_lock:
        return (dag_id, task_id) in _converted


def mark_converted(dag_id: str, task_id: str) -> None:
    with _converted_lock:
        _converted.add((dag_id, task_id))


def replays_output(task: Any) -> bool:
    """Whether ``task.execute`` was wrapped so the gate can serve a replayed output."""
    return bool(getattr(getattr(task, "execute", None), GATED_MARK, False))
