"""Foreach progress: which items of a loop a resumed attempt may skip (DESIGN.md §5). Pure.

``for item in bfx.foreach(items, key=...)`` checkpoints every finished item as a
``FOREACH_PROGRESS`` row: its iteration index (``IterationKey``) and the fingerprint of its key
(``ItemFingerprint``). A later attempt of the same lineage skips the longest contiguous prefix of
its own list whose fingerprints match those rows, and re-executes from the first item that is
missing or changed. Contiguous, because work after a changed item may have depended on it: item
45 being unchanged says nothing once item 30 was replaced.

Why fingerprints of a *key* and not of the item: items are often rich objects (a dict with a
timestamp in it, a connection) whose JSON form changes from run to run; the key says what makes an
item "the same work" (a table name, a file path, a partition). The key must therefore be unique
within the list, and it must be JSON (strings, numbers, booleans, None, lists, dicts): a ``repr``
with a memory address in it would never match on resume, so it is refused instead of guessed at.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_bfx.exceptions import BfxError

#: NodeKey of the first loop of a task; the n-th loop of the same task is ``foreach.<n>``.
FOREACH_NODE = "foreach"


class ForeachKeyError(BfxError, ValueError):
    """The items of a loop cannot be told apart by their keys: nothing was run."""


def node_name(ordinal: int) -> str:
    """NodeKey of the ``ordinal``-th (1-based) unnamed loop of one task execution."""
    return FOREACH_NODE if ordinal <= 1 else f"{FOREACH_NODE}.{ordinal}"


def key_fingerprint(value: Any) -> str:
    """sha256 of a key's canonical JSON (sorted keys, no whitespace), typed so ``1 != "1"``."""
    if isinstance(value, str):  # the common case (table names, paths), without json.dumps
        text = "s:" + value
    else:
        text = "j:" + json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_fingerprints(items: Sequence[Any], key: Callable[[Any], Any] | None = None) -> list[str]:
    """The fingerprint of every item's key, in order; raises :class:`ForeachKeyError` when a key
    is not JSON or two items share one (before any item runs)."""
    fingerprints: list[str] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        value = key(item) if key is not None else item
        try:
            fp = key_fingerprint(value)
        except (TypeError, ValueError) as exc:
            raise ForeachKeyError(
                f"bfx.foreach: the key of item {index} ({_show(value)}) is not JSON ({exc}). "
                "Pass key=... returning a string, number or tuple that identifies the item, "
                "e.g. key=lambda t: t['table']."
            ) from None
        first = seen.setdefault(fp, index)
        if first != index:
            raise ForeachKeyError(
                f"bfx.foreach: items {first} and {index} have the same key {_show(value)}; a "
                "resumed run could not tell which of them was done. Pass key=... returning "
                "something unique per item, or remove the duplicate."
            )
        fingerprints.append(fp)
    return fingerprints


@dataclass(frozen=True)
class ResumePoint:
    """Where a loop (re)starts: items ``[0, resumed_at)`` are restored from the catalog."""

    resumed_at: int
    total: int
    reason: str  # "fresh" (no progress), "complete", "missing" or "changed" at resumed_at

    @property
    def skipped(self) -> int:
        return self.resumed_at


def resume_point(fingerprints: Sequence[str], done: Mapping[int, str | None]) -> ResumePoint:
    """The longest contiguous prefix of ``fingerprints`` that ``done`` (iteration index ->
    recorded item fingerprint) confirms item by item."""
    total = len(fingerprints)
    if not done:
        return ResumePoint(0, total, "fresh")
    for index, fp in enumerate(fingerprints):
        recorded = done.get(index)
        if recorded is None:
            return ResumePoint(index, total, "missing")
        if recorded != fp:
            return ResumePoint(index, total, "changed")
    return ResumePoint(total, total, "complete")


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
