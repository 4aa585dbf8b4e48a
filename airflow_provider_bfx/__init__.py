"""Restart and recovery for Apache Airflow tasks, kept in a SQL catalog the user owns.

Kept import-free on purpose: Airflow imports provider packages while it discovers them, and the
catalog modules must stay usable without Airflow.
"""

__version__ = "0.1.0"
