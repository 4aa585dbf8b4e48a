"""The provider is discoverable by Airflow and documents every [bfx] option it reads."""

from __future__ import annotations

import json
from importlib.metadata import distribution, entry_points
from pathlib import Path

import jsonschema
import pytest

import airflow_provider_bfx
from airflow_provider_bfx.get_provider_info import get_provider_info

EXPECTED_DEFAULTS = {
    "catalog_conn_id": "bfx_catalog_default",
    "embedded_catalog_path": "",
    "route_all_dags": "False",
    "version_mismatch_policy": "WARN",
    "lease_duration": "60",
    "on_catalog_unavailable": "fail",
    "resume_scope": "lineage",
    "retry_limit": "3",
    "max_resume_age": "",
    "skip_ahead": "True",
    "recovery_link": "True",
}


def test_entry_point_resolves_to_get_provider_info() -> None:
    ours = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.name == "airflow-provider-bfx"
    ]
    assert len(ours) == 1
    assert ours[0].value == "airflow_provider_bfx.get_provider_info:get_provider_info"
    assert ours[0].load() is get_provider_info


def test_console_script_points_at_cli_main() -> None:
    scripts = {ep.name: ep.value for ep in distribution("airflow-provider-bfx").entry_points}
    assert scripts["bfx"] == "airflow_provider_bfx.cli.main:main"


def test_versions_agree() -> None:
    info = get_provider_info()
    installed = distribution("airflow-provider-bfx").version
    assert info["package-name"] == "airflow-provider-bfx"
    assert info["versions"] == [airflow_provider_bfx.__version__] == [installed] == ["0.1.0"]


def test_matches_airflow_runtime_schema() -> None:
    import airflow

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(get_provider_info(), schema)


@pytest.mark.parametrize("option", sorted(EXPECTED_DEFAULTS))
def test_every_bfx_option_is_documented_with_its_default(option: str) -> None:
    options = get_provider_info()["config"]["bfx"]["options"]
    spec = options[option]
    assert spec["default"] == EXPECTED_DEFAULTS[option]
    assert isinstance(spec["description"], str) and len(spec["description"].strip()) > 20
    assert spec["type"] in {"string", "boolean", "integer", "float"}
    assert "example" in spec and spec["example"]
    assert spec["version_added"] == "0.1.0"


def test_no_undocumented_extra_options() -> None:
    options = get_provider_info()["config"]["bfx"]["options"]
    assert set(options) == set(EXPECTED_DEFAULTS)


def test_enumerated_defaults_are_named_in_their_description() -> None:
    options = get_provider_info()["config"]["bfx"]["options"]
    for option, choices in {
        "version_mismatch_policy": ("WARN", "RERUN", "FAIL"),
        "on_catalog_unavailable": ("fail", "run"),
        "resume_scope": ("lineage", "logical_date"),
    }.items():
        for choice in choices:
            assert choice in options[option]["description"], (option, choice)


def test_no_connection_type_of_our_own() -> None:
    # The catalog uses the postgres / mssql / sqlite connection types of their providers.
    assert get_provider_info()["connection-types"] == []


def test_providers_manager_lists_the_provider_and_its_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager

    for option in ("catalog_conn_id", "lease_duration", "route_all_dags"):
        monkeypatch.delenv(f"AIRFLOW__BFX__{option.upper()}", raising=False)
    manager = ProvidersManager()
    provider = manager.providers["airflow-provider-bfx"]
    assert provider.version == "0.1.0"
    assert "bfx" in dict(manager.provider_configs)["airflow-provider-bfx"]
    # Airflow's configuration serves our defaults.
    assert conf.get("bfx", "catalog_conn_id") == "bfx_catalog_default"
    assert conf.getint("bfx", "lease_duration") == 60
    assert conf.getboolean("bfx", "route_all_dags") is False
