"""Error texts are generic: whatever fails — a unique key, a value the database refuses, a driver error, an
unexpected exception, a malformed search, a Bundle entry — the answer names no SQL, table, constraint, file path or
stack frame, and the status is the client's 4xx (or a bare 500/503)."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from hifhir.fhir.kind import WriteContext
from hifhir.store.tables import metadata
from tests.builders import location
from tests.responses import created, refused

SQL = 'INSERT INTO location (code, name) VALUES (?, ?) -- /work/main/src/hifhir/fhir/kind.py line 12'
DRIVER = 'duplicate key value violates unique constraint "uq_location_code_current" DETAIL: Key (code)=(R1)'
_TABLES = sorted(t.name for t in metadata.sorted_tables if "_" in t.name)
LEAK = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE FROM|WHERE|VALUES)\b|sqlalchemy|psycopg|sqlite|Traceback|\.py\b|/work/|"
    r"violates|constraint|\buq_|DETAIL|Key \(|\b(" + "|".join(_TABLES) + r")\b", re.IGNORECASE)


def assert_generic(resp: Any, *statuses: int, sent: str = "") -> dict[str, Any]:
    """The status, an OperationOutcome, and no internal name in it (but what the client sent, echoed back)."""
    assert resp.status_code in statuses, resp.text
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    leaks = [m.group(0) for m in LEAK.finditer(resp.text) if m.group(0).lower() not in sent.lower()]
    assert not leaks, (leaks, resp.text)
    return body


def failing_flush(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def flush(_self: WriteContext) -> Any:
        raise error

    monkeypatch.setattr(WriteContext, "flush", flush)


def test_a_duplicate_code_is_a_409_naming_the_code_not_the_index(api):
    created(api.post("Location", location("R1", "Ultha", "R")))

    body = assert_generic(api.post("Location", location("R1", "Other", "R")), 409)

    assert "R1" in body["issue"][0]["diagnostics"]


def test_an_integrity_error_nothing_maps_is_a_generic_409(api, monkeypatch):
    failing_flush(monkeypatch, IntegrityError(SQL, ("R1", "Ultha"), Exception(DRIVER)))

    body = assert_generic(api.post("Location", location("R1", "Ultha", "R")), 409)

    assert body["issue"][0]["code"] == "conflict"


def test_a_value_the_database_refuses_is_a_generic_400(api, monkeypatch):
    failing_flush(monkeypatch, DataError(SQL, ("R1",), Exception('value too long for type character varying(8)')))

    body = assert_generic(api.post("Location", location("R1", "Ultha", "R")), 400)

    assert body["issue"][0]["diagnostics"] == "A value is out of range or too long for its field"


def test_an_unavailable_database_is_a_generic_503(api, monkeypatch):
    failing_flush(monkeypatch, OperationalError(SQL, (), Exception("could not connect to server: /var/run/x.sock")))

    assert_generic(api.post("Location", location("R1", "Ultha", "R")), 503)


def test_an_unexpected_exception_is_a_bare_500(api, monkeypatch):
    failing_flush(monkeypatch, RuntimeError(f"{SQL} {DRIVER}"))

    body = assert_generic(api.post("Location", location("R1", "Ultha", "R")), 500)

    assert body["issue"][0]["diagnostics"] == "Internal server error"


def test_an_over_long_value_is_refused_before_the_database(api):
    for body in (location("R" + "9" * 40, "Ultha", "R"), location("R2", "x" * 5000, "R")):
        assert_generic(api.post("Location", body), 400, 422)


@pytest.mark.parametrize("query", [
    "Patient?birthdate=2020-13-45", "Patient?birthdate=xx2020", "Patient?_lastUpdated=ge9999-12-31T23:59:59-14:00",
    "Patient?family=' OR '1'='1", "Patient?identifier=" + "9" * 500, "Patient?_id=1;DROP TABLE insuree",
    "Patient?group.identifier:exact=%00", "Patient?_has:Group:member:x=1", "Patient?_sort=password_hash",
    "Patient?_include=Patient:app_user", "Patient?_count=1e9", "Patient?_cursor=WzAsWyJhIiwwXV0",
    "Patient?gender:above=male", "Location?partof:missing=maybe", "Location?partof=Location/../../x",
])
def test_malformed_searches_get_generic_400s(api, query):
    assert_generic(api.get(query, headers={"Prefer": "handling=strict"}), 400, sent=unquote(query))


def test_a_bundle_entry_the_database_refuses_gets_a_generic_entry_outcome(api, monkeypatch):
    failing_flush(monkeypatch, DataError(SQL, ("R1",), Exception("numeric field overflow")))
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Location"}, "resource": location("R1", "Ultha", "R")},
        {"request": {"method": "GET", "url": "Location?_count=1"}}]}

    resp = api.post("", bundle)

    assert resp.status_code == 200, resp.text
    first, second = resp.json()["entry"]
    assert first["response"]["status"] == "400"
    assert LEAK.search(str(first["response"]["outcome"])) is None
    assert second["response"]["status"].startswith("200")


def test_a_transaction_that_fails_in_the_database_is_a_generic_409(api, monkeypatch):
    failing_flush(monkeypatch, IntegrityError(SQL, (), Exception(DRIVER)))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Location"}, "resource": location("R1", "Ultha", "R")}]}

    assert_generic(api.post("", bundle), 409)


DEEP = b'{"extension":[' * 300 + b'{"url":"x"}' + b"]}" * 300


def test_a_batch_entry_nested_too_deeply_is_that_entrys_400(api):
    body = (b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},'
            b'"resource":{"resourceType":"Patient","extension":[' + DEEP + b"]}}]}")

    resp = api.post("", body)

    assert resp.status_code == 200, resp.text
    assert resp.json()["entry"][0]["response"]["status"] == "400"


def test_validate_of_a_resource_nested_too_deeply_is_a_400(api):
    body = (b'{"resourceType":"Parameters","parameter":[{"name":"resource","resource":{"resourceType":"Patient",'
            b'"extension":[' + DEEP + b"]}}]}")

    refused(api.post("Patient/$validate", body), 400, text="nested too deeply")


def test_a_large_invalid_body_is_refused_quickly(api):
    """20,000 invalid extensions (240 KB): a schema error each, which once cost a minute of CPU to list."""
    body = {"resourceType": "Patient", "extension": [{"url": "x"}] * 20_000}
    start = time.monotonic()

    refused(api.post("Patient", body), 400)

    assert time.monotonic() - start < 5
