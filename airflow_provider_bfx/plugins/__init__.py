"""The provider's Airflow plugin (entry point ``airflow.plugins``); it registers no listener."""
