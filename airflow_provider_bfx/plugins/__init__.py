"""The provider's Airflow plugin (entry point ``airflow.plugins``): the DAG-run listener."""
