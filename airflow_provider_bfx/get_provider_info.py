"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

The shape follows the runtime schema ``airflow/provider_info.schema.json`` and the files Airflow's
own providers ship. The ``config`` section is how ``[bfx]`` options get their defaults and show up
in ``airflow config list``; every option the provider reads is documented here, nowhere else.

No connection type of our own is registered: the catalog is reached through an ordinary
``postgres``, ``mssql`` or ``sqlite`` connection (see ``BfxCatalogHook``).
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-bfx",
        "name": "BFX restart and recovery",
        "description": (
            "Restart-and-recovery state machine for Airflow tasks, kept in a SQL catalog "
            "(PostgreSQL, SQL Server or SQLite) the user owns: completed tasks of a failed run are "
            "skipped on the next run, failed tasks restart, and Databricks copy+compute tasks "
            "restart only their compute step.\n"
        ),
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "BFX catalog",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "BFX catalog",
                "python-modules": ["airflow_provider_bfx.hooks.catalog"],
            }
        ],
        "operators": [
            {
                "integration-name": "BFX catalog",
                "python-modules": ["airflow_provider_bfx.operators.databricks"],
            }
        ],
        "extra-links": ["airflow_provider_bfx.operators.databricks.BfxDatabricksRunLink"],
        "connection-types": [],
        "config": {
            "bfx": {
                "description": (
                    "Restart and recovery of routed DAGs: where the catalog lives and how a "
                    "failed run is resumed.\n"
                ),
                "options": {
                    "catalog_conn_id": {
                        "description": (
                            "Airflow connection of the catalog database: a postgres, mssql or "
                            "sqlite connection. When the connection with the default id is not "
                            "defined, an embedded SQLite catalog is used (see "
                            "embedded_catalog_path); any other id that is not defined is an "
                            "error.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "bfx_catalog_pg",
                        "default": "bfx_catalog_default",
                    },
                    "embedded_catalog_path": {
                        "description": (
                            "File of the embedded SQLite catalog, used when the connection "
                            "bfx_catalog_default is not defined. Empty means "
                            "$AIRFLOW_HOME/bfx_catalog.db. Every process that runs tasks must "
                            "see the same file.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/shared/airflow/bfx_catalog.db",
                        "default": "",
                    },
                    "route_all_dags": {
                        "description": (
                            "Route every DAG through the catalog, not only DAGs tagged bfx or "
                            "passed to route_dag().\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "version_mismatch_policy": {
                        "description": (
                            "What a task does when its operator fingerprint (its definition) "
                            "differs from the one recorded with the state it would reuse: WARN "
                            "reuses the state and logs BFX_FINGERPRINT_MISMATCH, RERUN discards "
                            "it and runs the task in full, FAIL fails the task saying what "
                            "changed.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "RERUN",
                        "default": "WARN",
                    },
                    "lease_duration": {
                        "description": (
                            "Seconds an active execution's lease lasts before it must be renewed. "
                            "A running task renews it in the background; an execution whose "
                            "lease has expired is treated as crashed (BFX_LEASE_EXPIRED).\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "120",
                        "default": "60",
                    },
                    "on_catalog_unavailable": {
                        "description": (
                            "What a routed task does when the catalog cannot be reached at its "
                            "start (after brief retries): fail fails it before any work with "
                            "BFX_CATALOG_UNAVAILABLE, run lets it run unrouted.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "run",
                        "default": "fail",
                    },
                    "resume_scope": {
                        "description": (
                            "Which later run resumes a failed run: lineage means any later run of "
                            "the DAG (right for watermark-driven loads), logical_date only a run "
                            "of the same logical date (right for loads partitioned by data "
                            "interval). Can be overridden per DAG.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "logical_date",
                        "default": "lineage",
                    },
                    "retry_limit": {
                        "description": (
                            "Default RetryLimit of a new package: consecutive resumed attempts "
                            "of one lineage before the next run starts fresh "
                            "(BFX_RETRY_LIMIT_REACHED). The catalog's Package.RetryLimit column "
                            "overrides it per DAG.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "5",
                        "default": "3",
                    },
                    "max_resume_age": {
                        "description": (
                            "Default MaxResumeAge of a new package, in seconds: a lineage older "
                            "than this starts fresh instead of resuming (BFX_RESUME_EXPIRED). "
                            "Empty means no limit. The catalog's Package.MaxResumeAge column "
                            "overrides it per DAG.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "86400",
                        "default": "",
                    },
                    "skip_ahead": {
                        "description": (
                            "The first task of a resumed run decides the run's other completed "
                            "tasks at once and has Airflow skip them, with their outputs "
                            "replayed as their XComs, so that none of them needs a task process "
                            "of its own. False: each starts and skips itself (its log then "
                            "shows its own BFX_SKIP_COMPLETED line).\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "recovery_link": {
                        "description": (
                            'Add the operator extra link "Recovery" (the task\'s recovery '
                            "view) to every routed task. Airflow 3 computes an operator's links "
                            "when each try ends and stores each as an XCom, so the link costs "
                            "one XCom write per try. False: no link (the Recovery tab of the "
                            "task instance and the other views stay).\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                },
            }
        },
    }
