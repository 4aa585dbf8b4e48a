"""Airflow hooks of the provider."""

from airflow_provider_bfx.hooks.catalog import BfxCatalogHook

__all__ = ["BfxCatalogHook"]
