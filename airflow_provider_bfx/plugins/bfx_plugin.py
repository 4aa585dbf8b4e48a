"""``BfxPlugin``: what the provider plugs into Airflow (entry point ``airflow.plugins``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_bfx.plugins.listener import BfxDagRunListener


class BfxPlugin(AirflowPlugin):
    name = "bfx"
    listeners = [BfxDagRunListener()]
