"""Every exception the provider raises derives from :class:`BfxError`. No Airflow here.

``except BfxError`` catches anything of ours. Each class also keeps the builtin base it always
had (``RuntimeError``, ``ValueError``, ``TypeError``), so code that caught those still does, and
each stays importable from the module that raised it before this file existed.
"""

from __future__ import annotations


class BfxError(Exception):
    """Base of every exception of airflow-provider-bfx."""


class CatalogStateError(BfxError, RuntimeError):
    """The catalog holds rows that contradict the request (e.g. ending an unknown execution)."""
