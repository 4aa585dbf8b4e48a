"""Checkpoint payloads: standard JSON the catalog can hold, or a clear refusal naming the value.

A ``NODE_OUTPUT`` payload (``bfx.checkpoint(node, output)``, a task's recorded return value) is
stored as JSON text in ``bfx.ExecutionCheckpoint.Payload`` and read back by a later run, and by
anyone who ``SELECT``s it. Two kinds of value cannot be stored faithfully:

* values JSON has no type for (a ``datetime``, a ``Decimal``, an object): ``json.dumps`` refuses
  them;
* ``NaN`` and ``Infinity``: Python's ``json`` would write them as the non-standard tokens
  ``NaN``/``Infinity``, which PostgreSQL's ``json`` type, SQL Server's ``OPENJSON`` and most JSON
  readers reject, so a row that looks recorded could not be read back outside Python. They are
  refused (``allow_nan=False``) like any other value JSON cannot hold.

:func:`encode_payload` raises :class:`UnrecordablePayload` naming the node, where in the payload
the first such value is, its type and its value, so the author knows what to convert.

:data:`UNRECORDED` is what a recorded return value reads back as when the task completed but its
value could not be stored (the row's ``Payload`` is SQL ``NULL``; a stored ``None`` is the JSON
text ``null``): the task then runs again instead of being skipped with a missing output
(decision 0091). No Airflow import here.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from airflow_provider_bfx.exceptions import BfxError

_REPR_LIMIT = 120
_HINT = (
    "store plain dicts, lists, strings, finite numbers, booleans or None (e.g. a datetime as"
    " its .isoformat(), a Decimal as a str)"
)


class _Unrecorded:
    """The single marker of a completed node whose output could not be stored."""

    _instance: _Unrecorded | None = None

    def __new__(cls) -> _Unrecorded:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNRECORDED"

    def __bool__(self) -> bool:
        return False


#: Write it as a payload to record "completed, output not stored" (SQL NULL); read back as such.
UNRECORDED: Final = _Unrecorded()


class UnrecordablePayload(BfxError, TypeError):
    """A payload JSON cannot hold. A ``TypeError`` like ``json.dumps``'s own refusal, so that
    callers that caught that keep working; ``type_name`` and ``value_repr`` name the culprit."""

    def __init__(self, node: str, where: str, type_name: str, value_repr: str, why: str) -> None:
        self.node = node
        self.where = where
        self.type_name = type_name
        self.value_repr = value_repr
        super().__init__(
            f"checkpoint {node!r}: payload is not JSON-serialisable: {where} is {why}; {_HINT}"
        )


def type_name(value: object) -> str:
    """``datetime.datetime``, ``decimal.Decimal``, ``float``: the type as an author writes it."""
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _short_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real problem
        text = f"<{type_name(value)}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _first_problem(value: Any, where: str, seen: set[int]) -> tuple[str, Any, bool] | None:
    """(where, value, is_key) of the first value ``json.dumps(allow_nan=False)`` refuses."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value, False)
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            return (where, value, False)  # a circular reference
        seen = seen | {id(value)}
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _first_problem(item, f"{where}[{index}]", seen)
            if found is not None:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                return (f"a key of {where}", key, True)
            if isinstance(key, float) and not math.isfinite(key):
                return (f"a key of {where}", key, False)
            found = _first_problem(item, f"{where}[{key!r}]", seen)
            if found is not None:
                return found
        return None
    return (where, value, False)


def encode_payload(payload: Any, *, node: str) -> str:
    """The payload as standard JSON text (sorted keys), or :class:`UnrecordablePayload`.

    A stored payload reads back with ``json.loads``: tuples as lists, and dict keys as strings."""
    if payload is UNRECORDED:
        raise ValueError("UNRECORDED is a marker, not a payload: it is stored as SQL NULL")
    try:
        return json.dumps(payload, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        found = _first_problem(payload, "value", set())
        if found is None:  # e.g. dict keys of mixed types, which sort_keys cannot order
            raise UnrecordablePayload(
                node, "the value", type_name(payload), _short_repr(payload), f"refused ({exc})"
            ) from exc
        where, value, is_key = found
        name = type_name(value)
        shown = _short_repr(value)
        where = "the value" if where == "value" else where
        if is_key:
            why = f"a {name} ({shown}), which JSON cannot have as an object key"
        elif isinstance(value, float):
            why = f"the float {shown}, which standard JSON cannot hold (NaN/Infinity)"
        elif isinstance(value, (list, tuple, dict)):
            why = f"a {name} that contains itself (a circular reference)"
        else:
            why = f"a {name} ({shown}), which JSON has no type for"
        raise UnrecordablePayload(node, where, name, shown, why) from exc


def decode_payload(text: str | None) -> Any:
    """A stored payload read back: ``UNRECORDED`` for SQL NULL, else the JSON value."""
    return UNRECORDED if text is None else json.loads(text)
