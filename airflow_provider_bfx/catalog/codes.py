"""The one-letter codes and log tokens of the catalog contract (DESIGN.md §4, §7).

These names are promises to users: they appear in rows people ``SELECT`` and in log lines they
grep. They are plain string enums so that a value read from the database compares equal to the
member, and so that an unknown letter in a hand-edited row fails loudly in :func:`parse_status`
and :func:`parse_next_load_status` instead of being guessed at.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from airflow_provider_bfx.exceptions import BfxError


class ExecutionStatus(str, Enum):
    """Where an execution is now (``ExecutionStatus`` column)."""

    EXECUTING = "E"
    RETRYING = "R"  # full rerun
    COMPUTE_ONLY = "D"  # compute-only restart, reusing landed data
    SUCCEEDED = "S"
    FAILED = "F"
    SKIPPED = "C"  # already completed in this lineage, or package disabled
    ABORTED = "A"  # stale (lease expired) or refused (already running)

    def __str__(self) -> str:
        return self.value

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self not in ACTIVE_STATUSES


class NextLoadStatus(str, Enum):
    """The instruction for the next execution of the same package in the lineage."""

    PENDING = "P"  # run normally
    SKIP = "C"  # skip, already completed
    RETRY = "R"  # full retry
    COMPUTE_ONLY = "D"  # compute-only restart, reuse landed data

    def __str__(self) -> str:
        return self.value


ACTIVE_STATUSES = frozenset(
    {ExecutionStatus.EXECUTING, ExecutionStatus.RETRYING, ExecutionStatus.COMPUTE_ONLY}
)
TERMINAL_STATUSES = frozenset(set(ExecutionStatus) - ACTIVE_STATUSES)


class VersionMismatchPolicy(str, Enum):
    """What to do when a task's definition changed since the state it would reuse was written."""

    WARN = "WARN"
    RERUN = "RERUN"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return self.value


class Token(str, Enum):
    """Grep-friendly log tokens: ``[TOKEN] key=value ...`` (DESIGN.md §7)."""

    SKIP_COMPLETED = "BFX_SKIP_COMPLETED"
    COMPUTE_ONLY_RESTART = "BFX_COMPUTE_ONLY_RESTART"
    RETRY = "BFX_RETRY"
    BATCH_RESUME = "BFX_BATCH_RESUME"
    BATCH_RECONCILED = "BFX_BATCH_RECONCILED"
    CONCURRENT_BATCH = "BFX_CONCURRENT_BATCH"
    RETRY_LIMIT_REACHED = "BFX_RETRY_LIMIT_REACHED"
    RESUME_EXPIRED = "BFX_RESUME_EXPIRED"
    PACKAGE_DISABLED = "BFX_PACKAGE_DISABLED"
    ALREADY_RUNNING = "BFX_ALREADY_RUNNING"
    LEASE_EXPIRED = "BFX_LEASE_EXPIRED"
    FINGERPRINT_MISMATCH = "BFX_FINGERPRINT_MISMATCH"
    FOREACH_RESUME = "BFX_FOREACH_RESUME"
    CATALOG_UNAVAILABLE = "BFX_CATALOG_UNAVAILABLE"
    ADOPTED_AIRFLOW_STATE = "BFX_ADOPTED_AIRFLOW_STATE"

    def __str__(self) -> str:
        return self.value


class CheckpointType(str, Enum):
    NODE_OUTPUT = "NODE_OUTPUT"
    FOREACH_PROGRESS = "FOREACH_PROGRESS"

    def __str__(self) -> str:
        return self.value


E = TypeVar("E", bound=Enum)


class CorruptRowError(BfxError, ValueError):
    """A catalog row holds a value the contract does not know (e.g. a hand-edited code)."""


def _parse(kind: type[E], column: str, value: object, row: str) -> E:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise CorruptRowError(
            f"{row} has {column}={value!r}, which is not a catalog code (known: {known}). "
            "Correct the row by hand, or run `bfx reset DAG_ID` to start the lineage fresh."
        ) from None


def parse_status(value: object, *, row: str) -> ExecutionStatus:
    """Read an ``ExecutionStatus`` from the database, naming the row if the letter is unknown."""
    return _parse(ExecutionStatus, "ExecutionStatus", value, row)


def parse_next_load_status(value: object, *, row: str) -> NextLoadStatus:
    """Read a ``NextLoadStatus`` from the database, naming the row if the letter is unknown."""
    return _parse(NextLoadStatus, "NextLoadStatus", value, row)


def format_token(token: Token | str, /, **context: object) -> str:
    """``[TOKEN] key=value key=value``: the token first so that ``grep '\\[BFX_'`` finds it."""
    parts = [f"[{token.value if isinstance(token, Token) else token}]"]
    for key, value in context.items():
        if value is None:
            continue
        text = str(value)
        if not text or any(ch.isspace() for ch in text) or '"' in text:
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
