"""The ``url_route`` of each external view: Airflow shows them at ``/plugin/<url_route>`` (nav),
``/dags/<dag>/plugin/<url_route>``, ``.../runs/<run>/plugin/...`` and
``.../tasks/<task>/plugin/...``. Shared by the plugin, the pages' links and the extra link."""

NAV_ROUTE = "bfx-recovery"
DAG_ROUTE = "bfx-recovery-dag"
RUN_ROUTE = "bfx-recovery-run"
TASK_ROUTE = "bfx-recovery-task"
