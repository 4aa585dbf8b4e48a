"""The recovery actions in Airflow's audit log: who reset or resumed what, and when.

A reset (``bfx.reset``) or a resume in place (``bfx.resume``) changes what the next run does,
so each one is a row of Airflow's ``log`` table (the DAG's "Audit Log" tab, ``GET
/api/v2/eventLogs``), written by whoever performed it: the recovery view's API in the API
server, or the ``bfx`` CLI on an Airflow machine (decision 0097).
"""

from __future__ import annotations

import getpass
import json
import logging
from typing import Any

log = logging.getLogger("airflow_provider_bfx.audit")


def record_action(
    event: str, who: str, dag_id: str, task_id: str | None, outcome: dict[str, Any]
) -> None:
    """One audit-log row: ``event``, the user ``who``, the DAG (and task, and ``run_id`` when
    ``outcome`` names one), and ``outcome`` as the row's JSON ``extra``."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    run_id = outcome.get("run_id")
    with create_session() as session:
        session.add(
            Log(
                event=event,
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                owner=who,
                owner_display_name=who,
                extra=json.dumps(outcome, default=str),
            )
        )
    log.info("[%s] dag_id=%s task_id=%s run_id=%s user=%s", event, dag_id, task_id, run_id, who)


def cli_user() -> str:
    """The ``bfx`` CLI's user: ``cli:<operating-system user>``, as Airflow's own CLI records it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        return "cli"
