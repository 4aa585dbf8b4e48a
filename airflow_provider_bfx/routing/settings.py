"""The ``[bfx]`` options as the routing reads them, with per-DAG overrides from ``route_dag``.

Options are read at the moment they are needed (not at import), so that an environment variable
``AIRFLOW__BFX__...`` set by a deployment or a test is honoured. Invalid values raise
:class:`BfxSettingsError` with the option, the value and the accepted values: the gate turns that
into a task failure naming the option, the policy logs it and leaves the DAG unrouted.

Per-DAG overrides live on the DAG object as the attribute :data:`DAG_ROUTING_ATTR`. ``route_dag``
is called in the DAG file, and every process that runs a task re-executes that file, so the
attribute is there wherever the gate runs (the scheduler never needs it: it works from the
serialized DAG, which carries the trigger rules the routing changed). See decision 0040.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from airflow_provider_bfx.catalog.codes import VersionMismatchPolicy
from airflow_provider_bfx.catalog.machine import ResumeScope
from airflow_provider_bfx.exceptions import BfxError

SECTION = "bfx"
_ENV_PREFIX = "AIRFLOW__BFX__"
#: The one definition of the default catalog connection id (the hook's ``default_conn_name``).
DEFAULT_CATALOG_CONN_ID = "bfx_catalog_default"
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_RETRY_LIMIT = 3

#: Where ``route_dag`` keeps a DAG's overrides (the DAG class has no slots in Airflow 3).
DAG_ROUTING_ATTR = "_bfx_routing"


class BfxSettingsError(BfxError, ValueError):
    """A ``[bfx]`` option or a ``route_dag`` argument holds a value the provider does not know."""


class OnCatalogUnavailable(str, Enum):
    """What a routed task does when the catalog cannot be reached at its start."""

    FAIL = "fail"  # fail before any work, BFX_CATALOG_UNAVAILABLE
    RUN = "run"  # run unrouted, and say so

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DagRouting:
    """What ``route_dag(dag, ...)`` asked for; ``None`` means "as ``[bfx]`` says"."""

    catalog_conn_id: str | None = None
    version_mismatch_policy: VersionMismatchPolicy | None = None
    retry_limit: int | None = None
    resume_scope: ResumeScope | None = None


@dataclass(frozen=True)
class BfxSettings:
    """The effective settings of one DAG (``[bfx]`` with that DAG's overrides applied)."""

    catalog_conn_id: str = DEFAULT_CATALOG_CONN_ID
    route_all_dags: bool = False
    version_mismatch_policy: VersionMismatchPolicy = VersionMismatchPolicy.WARN
    lease_duration: float = DEFAULT_LEASE_SECONDS
    on_catalog_unavailable: OnCatalogUnavailable = OnCatalogUnavailable.FAIL
    resume_scope: ResumeScope = ResumeScope.LINEAGE
    #: ``[bfx] retry_limit``: the default of a new package (the Package row decides).
    retry_limit: int = DEFAULT_RETRY_LIMIT
    #: ``[bfx] max_resume_age`` in seconds, ``None`` = no limit (default of a new package).
    max_resume_age: int | None = None
    #: ``route_dag(retry_limit=...)``: overrides the Package row for this DAG's batches.
    dag_retry_limit: int | None = None
    #: ``[bfx] skip_ahead``: a resumed run skips its completed tasks without a task process
    #: each (decision 0106); off, each of them starts and skips itself.
    skip_ahead: bool = True
    #: ``[bfx] recovery_link``: the operator extra link "Recovery" on every routed task
    #: (decision 0112); off, no link, and no XCom pushed for it at the end of each try.
    recovery_link: bool = True


def airflow_conf() -> Any:
    """Airflow's configuration, through the Task SDK where it offers it. The one reader of
    the ``[bfx]`` section (the catalog hook reads its two options through it too)."""
    try:
        from airflow.sdk import conf as sdk_conf
    except ImportError:  # pragma: no cover - older Airflow 3 without airflow.sdk.conf
        from airflow.configuration import conf as core_conf

        return core_conf
    return sdk_conf


_conf = airflow_conf


def _raw(option: str, default: str) -> str:
    value = _conf().get(SECTION, option, fallback=default)
    return default if value is None else str(value).strip()


def parse_enum(enum: type[Any], value: object, *, option: str) -> Any:
    """``value`` as a member of ``enum`` (case-insensitive), or a :class:`BfxSettingsError`."""
    if isinstance(value, enum):
        return value
    text = str(value).strip()
    for member in enum:
        if member.value.lower() == text.lower():
            return member
    known = ", ".join(m.value for m in enum)
    raise BfxSettingsError(f"[{SECTION}] {option} = {value!r} is not one of: {known}")


def _int(option: str, text: str, *, allow_empty: bool = False, minimum: int = 0) -> int | None:
    if not text and allow_empty:
        return None
    try:
        number = int(text)
    except ValueError:
        raise BfxSettingsError(f"[{SECTION}] {option} = {text!r} is not an integer") from None
    if number < minimum:
        raise BfxSettingsError(f"[{SECTION}] {option} = {number} must be at least {minimum}")
    return number


def _float(option: str, text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise BfxSettingsError(f"[{SECTION}] {option} = {text!r} is not a number") from None
    if number <= 0:
        raise BfxSettingsError(f"[{SECTION}] {option} = {text!r} must be positive")
    return number


def _bool(option: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "t", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "f", "0", "no", "n", "off", ""):
        return False
    raise BfxSettingsError(f"[{SECTION}] {option} = {text!r} is not a boolean")


def route_all_dags() -> bool:
    """``[bfx] route_all_dags``, read on its own: the policy needs nothing else to decide."""
    return _bool("route_all_dags", _raw("route_all_dags", "False"))


def recovery_link() -> bool:
    """``[bfx] recovery_link``, read on its own: the routing installs the link at parse time,
    where nothing else of the section is needed."""
    return _bool("recovery_link", _raw("recovery_link", "True"))


_loaded: dict[tuple[tuple[str, str], ...], BfxSettings] = {}


def load_settings() -> BfxSettings:
    """The ``[bfx]`` section, validated, with the provider's defaults.

    Kept per snapshot of the ``AIRFLOW__BFX__*`` environment variables: a variable set (or
    changed) later is still honoured, while the ten options are not read again through
    Airflow's configuration on every task start (about 1 ms each time, issue 12). A value that
    fails validation is never kept, so it fails again, with its message, on the next read."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)))
    found = _loaded.get(key)
    if found is None:
        found = _read_settings()
        if len(_loaded) > 64:
            _loaded.clear()
        _loaded[key] = found
    return found


def _read_settings() -> BfxSettings:
    return BfxSettings(
        catalog_conn_id=_raw("catalog_conn_id", DEFAULT_CATALOG_CONN_ID) or DEFAULT_CATALOG_CONN_ID,
        route_all_dags=route_all_dags(),
        version_mismatch_policy=parse_enum(
            VersionMismatchPolicy,
            _raw("version_mismatch_policy", "WARN") or "WARN",
            option="version_mismatch_policy",
        ),
        lease_duration=_float(
            "lease_duration", _raw("lease_duration", str(int(DEFAULT_LEASE_SECONDS)))
        ),
        on_catalog_unavailable=parse_enum(
            OnCatalogUnavailable,
            _raw("on_catalog_unavailable", "fail") or "fail",
            option="on_catalog_unavailable",
        ),
        resume_scope=parse_enum(
            ResumeScope, _raw("resume_scope", "lineage") or "lineage", option="resume_scope"
        ),
        retry_limit=_int("retry_limit", _raw("retry_limit", str(DEFAULT_RETRY_LIMIT)), minimum=0)
        or 0,
        max_resume_age=_int(
            "max_resume_age", _raw("max_resume_age", ""), allow_empty=True, minimum=0
        ),
        skip_ahead=_bool("skip_ahead", _raw("skip_ahead", "True")),
        recovery_link=recovery_link(),
    )


def dag_routing(dag: Any) -> DagRouting | None:
    """The overrides ``route_dag`` stored on ``dag``, or None when it was never called."""
    routing = getattr(dag, DAG_ROUTING_ATTR, None)
    return routing if isinstance(routing, DagRouting) else None


def make_dag_routing(
    *,
    catalog_conn_id: str | None = None,
    version_mismatch_policy: VersionMismatchPolicy | str | None = None,
    retry_limit: int | None = None,
    resume_scope: ResumeScope | str | None = None,
) -> DagRouting:
    """Validate ``route_dag``'s arguments (a typo fails at parse time, naming the argument)."""
    if retry_limit is not None and (not isinstance(retry_limit, int) or retry_limit < 0):
        raise BfxSettingsError(f"route_dag(retry_limit={retry_limit!r}): expected an int >= 0")
    return DagRouting(
        catalog_conn_id=catalog_conn_id or None,
        version_mismatch_policy=None
        if version_mismatch_policy is None
        else parse_enum(
            VersionMismatchPolicy, version_mismatch_policy, option="version_mismatch_policy"
        ),
        retry_limit=retry_limit,
        resume_scope=None
        if resume_scope is None
        else parse_enum(ResumeScope, resume_scope, option="resume_scope"),
    )


def apply_overrides(settings: BfxSettings, routing: DagRouting | None) -> BfxSettings:
    if routing is None:
        return settings
    return replace(
        settings,
        catalog_conn_id=routing.catalog_conn_id or settings.catalog_conn_id,
        version_mismatch_policy=routing.version_mismatch_policy or settings.version_mismatch_policy,
        resume_scope=routing.resume_scope or settings.resume_scope,
        dag_retry_limit=routing.retry_limit,
    )


def settings_for(dag: Any) -> BfxSettings:
    """The effective settings of ``dag``: ``[bfx]`` with its ``route_dag`` overrides."""
    return apply_overrides(load_settings(), dag_routing(dag))
