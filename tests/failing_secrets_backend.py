"""A secrets backend that cannot answer (as a vault that is down would): for tests only."""

from __future__ import annotations

from typing import Any

from airflow.secrets import BaseSecretsBackend


class FailingBackend(BaseSecretsBackend):
    def get_conn_value(self, conn_id: str) -> str | None:
        raise ConnectionError("vault.example is unreachable")

    def get_connection(self, conn_id: str) -> Any:
        raise ConnectionError("vault.example is unreachable")
