"""Who may see and change what in the recovery view: Airflow's own users and permissions.

Every route of the plugin's app depends on :func:`current_user` (Airflow's ``get_user``: the
``Authorization: Bearer`` token, else the UI's ``_token`` cookie), so an anonymous call gets
Airflow's 401. Reading a DAG's rows needs read access to that DAG (``GET`` on the DAG's
``RUN`` entity, as Airflow's own DAG-run pages); reset needs edit access to it (``PUT``), and
``recover``, which scans every DAG, edit access to all DAGs. The auth manager decides, whichever
it is (simple, FAB, Keycloak, a team-aware one).

A reset is recorded in Airflow's audit log (the ``log`` table, the DAG's "Audit Log" tab):
event ``bfx.reset``, the user, the DAG and task, and what the reset changed (decision 0097).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, status

from airflow_provider_bfx.audit import record_action

Method = Literal["GET", "PUT"]


def _get_user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


#: The authenticated Airflow user of this request (401 when there is none).
CurrentUser = Annotated[Any, Depends(_get_user_dependency())]


def _team_name(dag_id: str) -> str | None:
    from airflow.models.dag import DagModel

    try:
        return DagModel.get_team_name(dag_id)
    except Exception:  # noqa: BLE001 - no team support configured: the DAG belongs to no team
        return None


def may_access_dag(user: Any, dag_id: str | None, method: Method) -> bool:
    """Whether ``user`` may read (``GET``) or edit (``PUT``) ``dag_id`` (None: every DAG)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    details = DagDetails(id=dag_id, team_name=_team_name(dag_id) if dag_id else None)
    return bool(
        get_auth_manager().is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, details=details, user=user
        )
    )


def require_dag(user: Any, dag_id: str | None, method: Method) -> None:
    """Raise Airflow's 403 unless ``user`` may ``method`` ``dag_id``."""
    if not may_access_dag(user, dag_id, method):
        what = "read" if method == "GET" else "edit"
        target = f"DAG {dag_id!r}" if dag_id else "every DAG"
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Forbidden: the recovery view needs {what} access to {target}",
        )


def readable_dag_ids(user: Any, candidates: Collection[str]) -> set[str]:
    """The DAGs of ``candidates`` the user may read (the auth manager's batch check)."""
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    return set(manager.filter_authorized_dag_ids(dag_ids=set(candidates), user=user, method="GET"))


def user_name(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:  # noqa: BLE001 - a user object without a name still resets; say so
        return "unknown"


def record_reset(user: Any, dag_id: str, task_id: str | None, outcome: dict[str, Any]) -> None:
    """Write the reset to Airflow's audit log (``log`` table, event ``bfx.reset``)."""
    record_action("bfx.reset", user_name(user), dag_id, task_id, outcome)
