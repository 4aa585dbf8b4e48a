"""``BfxPlugin``: what the provider plugs into Airflow (entry point ``airflow.plugins``).

It registers no listener on purpose (docs/decisions/0080): with any plugin listener registered,
Airflow refuses every DAG holding an ``end_from_trigger=True`` task, routed or not, and a
listener runs inside the scheduler loop. Batches end through the DAG callbacks the policy
installs on routed DAGs (:mod:`airflow_provider_bfx.routing.batch_end`).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class BfxPlugin(AirflowPlugin):
    name = "bfx"
