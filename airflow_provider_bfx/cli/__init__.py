"""The ``bfx`` command line: ``bfx catalog init|upgrade|ddl`` and the operational verbs.

Each verb lives in its own module of this package and is listed in
:data:`airflow_provider_bfx.cli.main.COMMAND_MODULES`; see :mod:`airflow_provider_bfx.cli.main`.
"""
