"""Deterministic keys: the same Airflow object always maps to the same catalog row or scope.

``ExternalExecutionID`` makes every start idempotent (a repeated call finds its own row), and
checkpoint scope keys survive every kind of retry because they are built from the lineage, the
task package and the item, never from an execution ID (DESIGN.md §3, §5).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

UNMAPPED = -1  # Airflow's map_index for a task that is not mapped
NO_ITEM = ""  # ItemFingerprint of a task that is not mapped
COPY_NODE = "copy"  # NodeKey of the checkpoint that says a copy step landed its data


def batch_package_name(dag_id: str) -> str:
    return dag_id


def task_package_name(dag_id: str, task_id: str) -> str:
    return f"{dag_id}.{task_id}"


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
