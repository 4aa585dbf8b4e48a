"""Fingerprints: what a task IS (its definition) and which ITEM a mapped task instance works on.

* :func:`operator_fingerprint` hashes the task's definition as written in the DAG file: the
  operator class, the raw (unrendered) values of its template fields, and the source of its
  Python callable. Rendered values are never used, so a daily ``{{ ds }}`` is not a change; a
  different SQL text, command or function body is. It is computed from the parse-time task object
  (``dag.task_dict[task_id]``, which the task runner never renders: it renders a copy), so the
  value is the same in every process that parses the same file.
* :func:`item_fingerprint` hashes the mapped input value of one mapped task instance, never its
  map index: an item keeps its identity when the list it came from grows, shrinks or reorders.

Nothing here does I/O except reading a callable's source (through ``linecache``, the file that
was just imported); no value's ``repr`` with a memory address is ever hashed.
"""

from __future__ import annotations

import datetime
import enum
import inspect
import re
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from airflow_provider_bfx.catalog import keys
from airflow_provider_bfx.routing.marks import is_mapped

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

#: Keyword arguments the routing itself installs on a mapped task: never part of its definition.
_ROUTING_KWARGS = frozenset(
    {
        "pre_execute",
        "post_execute",
        "on_success_callback",
        "on_failure_callback",
        "on_retry_callback",
        "on_skipped_callback",
        "on_execute_callback",
        "trigger_rule",
    }
)


def operator_class(task: Any) -> type[Any]:
    """The operator class of a task, also for a mapped task (``MappedOperator.operator_class``)."""
    cls = getattr(task, "operator_class", None) if is_mapped(task) else None
    return cls if isinstance(cls, type) else type(task)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def callable_source(fn: Callable[..., Any]) -> str:
    """The source of ``fn`` (dedented); for code with no source file (``exec``, a REPL) its
    qualified name and bytecode, which are stable across processes running the same code."""
    target = inspect.unwrap(fn) if callable(fn) else fn
    try:
        return textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is not None:
            return f"{_qualname(target)}:{code.co_code.hex()}:{code.co_consts!r}"
        return _qualname(target)


def normalize(value: Any) -> Any:
    """A JSON-able, process-independent picture of a raw task argument."""
    # Imported lazily: keeps this module importable (and testable) without Airflow's SDK loaded.
    from airflow.sdk.definitions.xcom_arg import XComArg

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _qualname(type(value)) + "." + value.name
    if isinstance(value, XComArg):
        refs = sorted([op.task_id, key] for op, key in value.iter_references())
        shape: dict[str, Any] = {"xcom": type(value).__name__, "refs": refs}
        maps = getattr(value, "callables", None)
        if maps:
            shape["map"] = [normalize(fn) for fn in maps]
        return shape
    if isinstance(value, Mapping):
        return {str(k): normalize(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((normalize(v) for v in value), key=repr)
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta):
        return {"type": type(value).__name__, "value": str(value)}
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return {"callable": callable_source(value)}
    if hasattr(value, "iter_references"):  # MappedArgument of a mapped task group
        refs = sorted([op.task_id, key] for op, key in value.iter_references())
        return {"mapped_argument": type(value).__name__, "refs": refs}
    if isinstance(value, type):
        return {"class": _qualname(value)}
    return {"object": _qualname(type(value)), "repr": _ADDRESS.sub("", repr(value))}


def _mapped_keys(task: Any) -> list[str]:
    attr = getattr(task, "_expand_input_attr", None) or "expand_input"
    expand_input = getattr(task, attr, None)
    value = getattr(expand_input, "value", None)
    if isinstance(value, Mapping):
        return sorted(str(k) for k in value)
    return ["<expand_kwargs>"]  # a list of dicts (expand_kwargs): the keys vary per item


def definition(task: Any) -> dict[str, Any]:
    """What :func:`operator_fingerprint` hashes, as a dict (handy when explaining a mismatch)."""
    cls = operator_class(task)
    fields: dict[str, Any] = {}
    callable_: Any = None
    mapped: list[str] | None = None
    if is_mapped(task):
        partial = getattr(task, "partial_kwargs", {}) or {}
        for name in sorted(getattr(task, "template_fields", ()) or ()):
            if name in partial and name not in _ROUTING_KWARGS:
                fields[name] = normalize(partial[name])
        callable_ = getattr(task, "python_callable", None) or partial.get("python_callable")
        mapped = _mapped_keys(task)
    else:
        for name in sorted(getattr(task, "template_fields", ()) or ()):
            fields[name] = normalize(getattr(task, name, None))
        callable_ = getattr(task, "python_callable", None)
    return {
        "class": _qualname(cls),
        "fields": fields,
        "callable": callable_source(callable_) if callable(callable_) else None,
        "mapped": mapped,
    }


def operator_fingerprint(task: Any) -> str:
    """sha256 of the task's definition (see the module docstring)."""
    return keys.fingerprint(definition(task))


def item_fingerprint(mapped_kwargs: Mapping[str, Any]) -> str:
    """sha256 of one mapped task instance's input (``{argument: value}``), never its index."""
    return keys.fingerprint({str(k): normalize(v) for k, v in mapped_kwargs.items()})
