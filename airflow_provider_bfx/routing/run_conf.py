"""The ``bfx`` entry of a DAG run's ``conf``: what a run asks of the routing, parsed in one place.

``dag_run.conf`` ``{"bfx": {...}}`` is an instruction to the routing (DESIGN.md §4, §7):

* ``"mode"``: ``"resume"`` (the default: resume a failed lineage when its limits allow) or
  ``"full"`` (start a fresh lineage, as ``bfx plan --full`` shows), case-insensitive;
* ``"parent_execution_id"``: the routed task execution that triggered this run, a positive
  integer written by a routed ``TriggerDagRunOperator`` (a nested batch, decision 0070).

An instruction that is not understood is never taken for "nothing was said": ``{"bfx": "x"}``, an
unknown key, an unknown mode or a value of the wrong type raises :class:`RunConfError` naming the
valid keys and values, and the gate fails the run's tasks before any work (decision 0092).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from airflow_provider_bfx.exceptions import BfxError

#: ``dag_run.conf[BFX_KEY]``: the routing's own entry; every other key of the conf is the user's.
BFX_KEY = "bfx"
MODE_KEY = "mode"
#: ``dag_run.conf["bfx"][PARENT_KEY]``: the task execution that triggered the run (nested batch).
PARENT_KEY = "parent_execution_id"


class Mode(str, Enum):
    """What a run asks for: resume a failed lineage if its limits allow, or start fresh."""

    RESUME = "resume"
    FULL = "full"

    def __str__(self) -> str:
        return self.value


_VALID = (
    f'{{"{BFX_KEY}": {{"{MODE_KEY}": "{Mode.FULL.value}" | "{Mode.RESUME.value}",'
    f' "{PARENT_KEY}": <a positive ExecutionID>}}}} (every key optional; {PARENT_KEY} is set by a'
    " routed TriggerDagRunOperator)"
)


class RunConfError(BfxError, ValueError):
    """A ``bfx`` entry of ``dag_run.conf`` the routing does not understand."""


@dataclass(frozen=True)
class RunConf:
    """The routing's instructions for one DAG run (the defaults: nothing was asked)."""

    mode: Mode = Mode.RESUME
    parent_execution_id: int | None = None

    @property
    def full_rerun(self) -> bool:
        return self.mode is Mode.FULL


def _mode(value: Any) -> Mode | str:
    """The mode, or what is wrong with it."""
    if isinstance(value, str):
        try:
            return Mode(value.strip().lower())
        except ValueError:
            pass
    valid = " or ".join(repr(m.value) for m in (Mode.FULL, Mode.RESUME))
    return f"{BFX_KEY}.{MODE_KEY}={value!r} is not a mode (valid: {valid})"


def _parent(value: Any) -> int | str:
    """The parent execution id, or what is wrong with it (message kept from decision 0070)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return (
            f"{BFX_KEY}.{PARENT_KEY}={value!r} is not an ExecutionID (a positive integer). It is"
            " set by a routed TriggerDagRunOperator; remove it from the run's conf to run this"
            " DAG as a top-level batch"
        )
    return value


def parse_run_conf(conf: Any) -> RunConf:
    """The routing's instructions in ``dag_run.conf`` (``None`` or no ``bfx`` key: none).

    Raises :class:`RunConfError` naming every entry that is not understood and the valid ones."""
    if not isinstance(conf, Mapping) or BFX_KEY not in conf:
        return RunConf()
    entry = conf[BFX_KEY]
    if not isinstance(entry, Mapping):
        raise RunConfError(
            f"dag_run.conf {BFX_KEY}={entry!r} is not understood: it must be a mapping, {_VALID}."
            " Trigger the run again with a valid conf."
        )
    problems: list[str] = []
    unknown = sorted(str(k) for k in entry if k not in (MODE_KEY, PARENT_KEY))
    if unknown:
        known = f"{MODE_KEY!r}, {PARENT_KEY!r}"
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))} (valid: {known})")
    mode = _mode(entry[MODE_KEY]) if MODE_KEY in entry else Mode.RESUME
    if not isinstance(mode, Mode):
        problems.append(mode)
    parent: int | str | None = None
    if entry.get(PARENT_KEY) is not None:  # None counts as absent, as it always did
        parent = _parent(entry[PARENT_KEY])
        if isinstance(parent, str):
            problems.append(parent)
    if problems:
        raise RunConfError(
            f"dag_run.conf {BFX_KEY} is not understood: {'; '.join(problems)}. Valid: {_VALID}."
            " Trigger the run again with a valid conf."
        )
    assert isinstance(mode, Mode) and not isinstance(parent, str)
    return RunConf(mode=mode, parent_execution_id=parent)
