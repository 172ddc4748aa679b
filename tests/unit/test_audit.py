"""The audit trail's classification of requests and its sink (batching, backpressure, shutdown) on SQLite."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from hifhir.api.http import HttpRequest, HttpResponse
from hifhir.audit.events import AuditRecord, classify, outcome_of, record_for
from hifhir.audit.sink import AuditSink
from hifhir.auth.users import Principal
from hifhir.store.db import make_engine
from hifhir.store.tables import audit_entity, audit_event, metadata


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/fhir/Patient/p1", ("read", "Patient", "p1", None)),
    ("GET", "/api/api_fhir_r4/Patient/p1/_history/3", ("vread", "Patient", "p1", 3)),
    ("GET", "/fhir/Patient", ("search-type", "Patient", None, None)),
    ("POST", "/fhir/Patient/_search", ("search-type", "Patient", None, None)),
    ("GET", "/fhir/Patient/_history", ("history-type", "Patient", None, None)),
    ("GET", "/fhir/Patient/p1/_history", ("history-instance", "Patient", "p1", None)),
    ("GET", "/fhir/_history", ("history-system", None, None, None)),
    ("POST", "/fhir/Patient", ("create", "Patient", None, None)),
    ("PUT", "/fhir/Patient/p1", ("update", "Patient", "p1", None)),
    ("PUT", "/fhir/Patient", ("update", "Patient", None, None)),
    ("DELETE", "/fhir/Patient/p1", ("delete", "Patient", "p1", None)),
    ("PATCH", "/fhir/AuditEvent/e1", ("patch", "AuditEvent", "e1", None)),
    ("GET", "/fhir/Patient/p1/$photo", ("operation", "Patient", "p1", None)),
    ("POST", "/fhir/", ("batch", None, None, None)),
    ("GET", "/api/admin/users", ("search-type", "User", None, None)),
    ("PATCH", "/api/admin/users/bob", ("patch", "User", "bob", None)),
    ("POST", "/api/admin/users/bob/revoke-tokens", ("operation", "User", "bob", None)),
    ("POST", "/api/admin/roles", ("create", "Role", None, None)),
])
def test_the_interaction_of_a_request(method, path, expected):
    found = classify(method, path)
    assert found is not None
    assert (found.subtype, found.resource_type, found.res_id, found.version) == expected


@pytest.mark.parametrize("path", ["/fhir/metadata", "/fhir/login", "/api/api_fhir_r4/login/", "/oauth/token",
                                  "/fhir/oauth/token", "/healthz", "/fhirx/Patient", "/api/admin/other",
                                  "/.well-known/smart-configuration"])
def test_what_is_not_a_resource_interaction(path):
    assert classify("POST", path) is None


@pytest.mark.parametrize(("status", "outcome"), [(200, "0"), (201, "0"), (204, "0"), (400, "4"), (401, "4"),
                                                 (403, "4"), (404, "4"), (410, "4"), (500, "12"), (503, "8")])
def test_outcomes(status, outcome):
    assert outcome_of(status) == outcome


def request(method: str, path: str, query: str = "", body: bytes = b"") -> HttpRequest:
    req = HttpRequest(method, path, query, {"user-agent": "test"}, body=body, host="10.1.2.3")
    req.principal = Principal("clerk", frozenset(), False)
    return req


def test_master_data_reads_are_not_recorded_but_writes_and_personal_reads_are():
    assert record_for(request("GET", "/fhir/Medication/m1"), HttpResponse(200, audit=[("Medication", "m1", 1)])) is None
    assert record_for(request("GET", "/fhir/Location"), HttpResponse(200, audit=[])) is None
    write = record_for(request("PUT", "/fhir/Medication/m1"), HttpResponse(200, audit=[("Medication", "m1", 2)]))
    assert write is not None and (write.action, write.entities) == ("U", [("Medication", "m1", 2)])
    # a search of master data that _revincludes personal data is recorded
    mixed = record_for(request("GET", "/fhir/Location", "_revinclude=Patient:location"),
                       HttpResponse(200, audit=[("Location", "l1", 1), ("Patient", "p1", 4)]))
    assert mixed is not None and mixed.query == "_revinclude=Patient:location"


def test_a_refused_read_names_the_resource_of_the_path_and_no_user_when_unauthenticated():
    req = request("GET", "/fhir/Patient/p9")
    req.principal = None
    record = record_for(req, HttpResponse(401))
    assert record is not None
    assert (record.username, record.outcome, record.status) == (None, "4", 401)
    assert record.entities == [("Patient", "p9", None)]


def test_a_bundle_is_told_transaction_or_batch():
    answered = record_for(request("POST", "/fhir", body=b'{"type": "transaction"}'),
                          HttpResponse(200, b'{"resourceType":"Bundle","type":"transaction-response"}', audit=[]))
    refused = record_for(request("POST", "/fhir/", body=b'{"resourceType":"Bundle","type" : "transaction"}'),
                         HttpResponse(400, b"{}"))
    assert answered is not None and answered.subtype == "transaction"
    assert refused is not None and refused.subtype == "transaction"


# --- the sink -------------------------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    metadata.create_all(engine)
    return engine


def a_record(n_entities: int = 2) -> AuditRecord:
    return AuditRecord(time.time_ns() // 1000, "R", "search-type", "0", 200, "clerk" + "x" * 80, None, "10.1.2.3",
                       "ua", "Patient", "family=Doe", "GET /fhir/Patient\x00",
                       [("Patient", f"p{i}", 1) for i in range(n_entities)])


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(audit_event)).scalar_one(),
                conn.execute(select(func.count()).select_from(audit_entity)).scalar_one())


def test_the_thread_writes_within_the_interval(engine):
    sink = AuditSink(engine, flush_interval_s=0.05)
    for _ in range(3):
        sink.put(a_record())
    deadline = time.monotonic() + 5
    while counts(engine) != (3, 6) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counts(engine) == (3, 6)
    with engine.connect() as conn:
        row: Any = conn.execute(select(audit_event)).first()
    assert len(row.username) == 50 and "\x00" not in row.description  # fitted to the columns
    sink.close()


def test_a_full_queue_is_written_by_the_request_itself(engine):
    sink = AuditSink(engine, flush_interval_s=3600, batch_size=10, max_pending=25)
    sink._start = lambda: None  # type: ignore[method-assign]  # no thread: only backpressure writes
    for _ in range(24):
        sink.put(a_record(1))
    assert counts(engine) == (0, 0)
    sink.put(a_record(1))
    assert counts(engine) == (25, 25) and sink.pending == 0


def test_close_writes_what_is_queued_without_waiting_for_the_interval(engine):
    sink = AuditSink(engine, flush_interval_s=3600)
    for _ in range(7):
        sink.put(a_record(0))
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 5  # the writer thread ends at once (it waited for the join's 10 s timeout)
    assert counts(engine) == (7, 0)
    sink.put(a_record(1))  # usable again after a close (another lifespan of the same app)
    sink.flush()
    assert counts(engine) == (8, 1)


def test_a_busy_database_is_retried_and_a_refused_record_does_not_stop_the_writer(engine, monkeypatch):
    import sqlite3

    from hifhir.audit import sink as sink_module

    keys, write = sink_module._BULK["sqlite"]
    failures = [sqlite3.OperationalError("database is locked")]

    def flaky(driver: Any, events: list[Any], entities: list[Any]) -> None:
        if failures:
            raise failures.pop()
        if any(e[-1] == "poison" for e in events):  # the driver's own error, as a refused value raises it
            raise sqlite3.IntegrityError("refused")
        write(driver, events, entities)

    monkeypatch.setitem(sink_module._BULK, "sqlite", (keys, flaky))
    monkeypatch.setattr(sink_module, "RETRY_PAUSE_S", 0.01)
    sink = AuditSink(engine, flush_interval_s=0.02)
    poison = dataclasses.replace(a_record(1), description="poison")
    for record in (a_record(1), poison, a_record(1)):
        sink.put(record)
    deadline = time.monotonic() + 5
    while counts(engine) != (2, 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counts(engine) == (2, 2)  # the busy database retried; only the refused record is missing
    sink.put(a_record(1))  # the writer thread is still alive
    deadline = time.monotonic() + 5
    while counts(engine) != (3, 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counts(engine) == (3, 3)
    sink.close()


def test_a_batch_goes_to_sqlite_in_one_statement_per_table_with_its_values_intact(engine, monkeypatch):
    # sqlite3 runs each row of an executemany as a step of its own, giving up the GIL around it; on a busy server the
    # writer thread then waited up to 5 ms to win the GIL back for every row and fell thousands of records behind.
    from hifhir.audit import sink as sink_module

    keys, write = sink_module._BULK["sqlite"]
    statements: list[str] = []

    def traced(driver: Any, events: list[Any], entities: list[Any]) -> None:
        driver.set_trace_callback(statements.append)
        try:
            write(driver, events, entities)
        finally:
            driver.set_trace_callback(None)

    monkeypatch.setitem(sink_module._BULK, "sqlite", (keys, traced))
    sink = AuditSink(engine, flush_interval_s=3600, batch_size=300)
    sink._start = lambda: None  # type: ignore[method-assign]  # written by flush() alone
    unversioned = dataclasses.replace(a_record(0), user_agent="Mözilla «ü» 日本", query="name=O'Brien\"; --",
                                      entities=[("Location", "v1", None)])
    sink.put(unversioned)
    for _ in range(299):
        sink.put(a_record(20))
    sink.flush()

    assert counts(engine) == (300, 1 + 299 * 20)
    assert len(statements) == 2
    with engine.connect() as conn:
        event: Any = conn.execute(select(audit_event).order_by(audit_event.c.pk)).first()
        entity: Any = conn.execute(select(audit_entity).where(audit_entity.c.event_pk == event.pk)).one()
        last: Any = conn.execute(select(audit_entity).order_by(audit_entity.c.event_pk.desc(),
                                                               audit_entity.c.position.desc())).first()
    assert (event.user_agent, event.query, event.recorded) == (unversioned.user_agent, unversioned.query,
                                                               unversioned.recorded)
    assert (entity.position, entity.resource_type, entity.resource_id, entity.version_id) == (0, "Location", "v1",
                                                                                             None)
    assert (last.position, last.resource_id, last.version_id) == (19, "p19", 1)
