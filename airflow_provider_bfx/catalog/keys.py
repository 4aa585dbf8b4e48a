"""Deterministic keys: the same Airflow object always maps to the same catalog row or scope.

``ExternalExecutionID`` makes every start idempotent (a repeated call finds its own row), and
checkpoint scope keys survive every kind of retry because they are built from the lineage, the
task package and the item, never from an execution ID (DESIGN.md §3, §5).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from airflow_provider_bfx.exceptions import BfxError

UNMAPPED = -1  # Airflow's map_index for a task that is not mapped
NO_ITEM = ""  # ItemFingerprint of a task that is not mapped
#: The try number of a row skip ahead writes (decision 0106): Airflow's own try number of a
#: task instance that never started, so a later real try is a key of its own.
AHEAD_TRY = 0
COPY_NODE = "copy"  # NodeKey of the checkpoint that says a copy step landed its data


#: The longest ``dag_id``, ``task_id`` and ``run_id`` Airflow accepts, and the catalog holds.
AIRFLOW_ID_LIMIT = 250


class CatalogIdError(BfxError, ValueError):
    """An Airflow id the catalog cannot hold: refused before any work, naming the limit."""


def package_name(dag_id: str, task_id: str | None = None) -> str:
    """``PackageName``: the ``dag_id`` for a batch package, ``dag_id/task_id`` for a task.

    Derived from the identity (``DagId``, ``TaskId``) and never split back into it. ``/`` never
    occurs in an Airflow id (``.`` does, in task groups and DAG ids), so the name is unambiguous;
    the catalog keys every lookup on the identity columns all the same (DESIGN.md §3).
    """
    return dag_id if task_id is None else f"{dag_id}/{task_id}"


def check_airflow_ids(dialect: str, **ids: str | None) -> None:
    """Refuse an id the catalog's columns cannot hold, before any work.

    Airflow limits ``dag_id``, ``task_id`` and ``run_id`` to 250 characters; so do the catalog's
    columns. SQL Server counts ``NVARCHAR`` lengths in UTF-16 code units, so there a character
    outside the Basic Multilingual Plane counts twice: an id of such characters that Airflow
    accepts can still be too long for a SQL Server catalog, and is named here rather than failing
    as a truncation error halfway through a transition.
    """
    for kind, value in ids.items():
        if value is None:
            continue
        if "/" in value and kind != "run_id":  # a run_id's "/" is harmless: parsed from the right
            raise CatalogIdError(
                f"{kind} {value[:80]!r} contains '/', which Airflow never allows in an id and"
                " the catalog uses to build PackageName: rename it"
            )
        length = len(value.encode("utf-16-le")) // 2 if dialect == "mssql" else len(value)
        if length > AIRFLOW_ID_LIMIT:
            unit = "UTF-16 code units on SQL Server" if dialect == "mssql" else "characters"
            raise CatalogIdError(
                f"{kind} {value[:80]!r}... is {length} {unit} long; the catalog holds ids of at"
                f" most {AIRFLOW_ID_LIMIT} {unit} (Airflow's own limit): shorten it"
            )


def batch_external_id(dag_id: str, run_id: str) -> str:
    return f"{dag_id}/{run_id}"


def task_external_id(
    dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> str:
    return f"{dag_id}/{run_id}/{task_id}/{map_index}/{try_number}"


def scope_key(lineage_id: int, package_id: int, item_fingerprint: str) -> str:
    """Checkpoint scope: lineage + task package + item fingerprint."""
    return f"L{lineage_id}/P{package_id}/I{item_fingerprint or '-'}"


def fingerprint(value: Any) -> str:
    """A stable sha256 of a JSON-able value (sorted keys; non-JSON values by ``repr``)."""
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
