"""Checkpoint payloads are standard JSON, or refused naming the node and the value (DESIGN.md §4).

``bfx.checkpoint(node, output)`` stores ``output`` as JSON text in
``bfx.ExecutionCheckpoint.Payload``. Python's ``json`` would write ``NaN``/``Infinity`` as
non-standard tokens that PostgreSQL's ``json`` type and most readers reject, so such a payload is
refused like a ``datetime``: nothing is written and the error names the node, where the value is,
its type and the value itself. On a real catalog (SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import select

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import upgrade
from airflow_provider_bfx.catalog.payload import UnrecordablePayload, encode_payload
from airflow_provider_bfx.catalog.store import CatalogStore
from tests.foreach_worker import open_handle


@pytest.fixture
def store(catalog_url: str) -> Any:
    engine = create_catalog_engine(catalog_url)
    upgrade(engine)
    yield CatalogStore(engine)
    engine.dispose()


def stored_payloads(store: CatalogStore) -> list[Any]:
    C = store.s.ExecutionCheckpoint
    with store.engine.connect() as conn:
        return list(conn.execute(select(C.c.NodeKey, C.c.Payload)).all())


@pytest.mark.parametrize(
    ("payload", "where", "shown"),
    [
        ({"rows": 3, "ratio": float("nan")}, "value['ratio']", "the float nan"),
        ([1.0, float("inf")], "value[1]", "the float inf"),
        (float("-inf"), "the value", "the float -inf"),
    ],
)
def test_a_checkpoint_holding_nan_or_infinity_is_refused_naming_node_and_value(
    store: CatalogStore, payload: Any, where: str, shown: str
) -> None:
    handle = open_handle(store, "run-1")
    with pytest.raises(UnrecordablePayload) as raised:
        handle.checkpoint("extract", payload)
    message = str(raised.value)
    assert message.startswith("checkpoint 'extract': payload is not JSON-serialisable")
    assert f"{where} is {shown}, which standard JSON cannot hold (NaN/Infinity)" in message
    assert isinstance(raised.value, TypeError)  # as json.dumps's own refusal always was
    assert stored_payloads(store) == []  # nothing half-written, no 'NaN' text in the catalog
    assert handle.get_checkpoint("extract", default="none") == "none"


def test_a_checkpoint_holding_a_date_names_its_type_and_where_it_is(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    with pytest.raises(UnrecordablePayload) as raised:
        handle.checkpoint("extract", {"tables": [{"name": "a", "as_of": date(2024, 5, 17)}]})
    assert raised.value.type_name == "datetime.date"
    assert (
        "value['tables'][0]['as_of'] is a datetime.date (datetime.date(2024, 5, 17)), which JSON"
        " has no type for" in str(raised.value)
    )
    assert stored_payloads(store) == []


def test_a_finite_payload_is_stored_as_standard_json(store: CatalogStore) -> None:
    handle = open_handle(store, "run-1")
    handle.checkpoint("extract", {"ratio": 0.5, "rows": [1, 2], "ok": True, "none": None})
    assert stored_payloads(store) == [
        ("extract", '{"none": null, "ok": true, "ratio": 0.5, "rows": [1, 2]}')
    ]
    assert handle.get_checkpoint("extract") == {
        "ratio": 0.5,
        "rows": [1, 2],
        "ok": True,
        "none": None,
    }


def test_encoding_refuses_what_standard_json_cannot_hold() -> None:
    """The pure encoder: keys JSON cannot have, and a value that contains itself."""
    with pytest.raises(UnrecordablePayload, match=r"a key of value is a tuple \(\(1, 2\)\)"):
        encode_payload({(1, 2): "x"}, node="n")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(UnrecordablePayload, match="a list that contains itself"):
        encode_payload(loop, node="n")
    assert encode_payload({"b": 1, "a": (1, 2)}, node="n") == '{"a": [1, 2], "b": 1}'
