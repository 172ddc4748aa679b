"""What the audit trail costs a request (audit/sink.py), outside `make bench`.

    .venv/bin/python -m bench.audit_sink [--calls N] [--database-url URL]

Times N `AuditSink.observe()` calls — the only audit work a request does — for a Patient read (audited: a record
is built and queued), a 10-resource Patient search page (audited, 10 entities) and a Medication read (not audited:
classified and skipped), then the background writing of the queued records (one transaction per 500). Prints
microseconds per call and events written per second. A throw-away SQLite file is used unless a URL is given: that
database must be migrated (`hifhir migrate`) and a scratch one, as 3 × N events are written into its trail.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hifhir.api.http import HttpRequest, HttpResponse
from hifhir.audit.sink import AuditSink
from hifhir.auth.users import Principal
from hifhir.store.db import make_engine
from hifhir.store.tables import metadata

_PRINCIPAL = Principal("officer1", frozenset({101001}), False)
_HEADERS = {"user-agent": "bench/1.0", "authorization": "Bearer x", "accept": "application/fhir+json"}


def _request(path: str, query: str = "") -> HttpRequest:
    request = HttpRequest("GET", path, query, _HEADERS, host="10.0.0.7")
    request.principal = _PRINCIPAL
    return request


def _time(sink: AuditSink, request: HttpRequest, response: HttpResponse, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        sink.observe(request, response)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'audit.db'}"
        engine = make_engine(url)
        if not args.database_url:
            metadata.create_all(engine)
        # The thread would write while we time the request side: give it nothing to do until flush().
        sink = AuditSink(engine, flush_interval_s=3600, batch_size=500, max_pending=10 * args.calls)
        sink._start = lambda: None  # type: ignore[method-assign]
        read = (_request("/fhir/Patient/5f0c7c1e-0b7e-4a53-9a40-3f6c1a8e2b11"),
                HttpResponse(200, b"{}", audit=[("Patient", "5f0c7c1e-0b7e-4a53-9a40-3f6c1a8e2b11", 3)]))
        page = (_request("/fhir/Patient", "family=Doe&_count=10"),
                HttpResponse(200, b"{}", audit=[("Patient", f"id-{i}", 1) for i in range(10)]))
        master = (_request("/fhir/Medication/5f0c7c1e"), HttpResponse(200, b"{}", audit=[("Medication", "m", 1)]))
        for name, (request, response) in (("Patient read (audited)", read), ("Patient search, 10 hits (audited)", page),
                                          ("Medication read (not audited)", master)):
            _time(sink, request, response, min(1000, args.calls))  # warm-up
            print(f"{name:40s} {_time(sink, request, response, args.calls):6.2f} µs per request")
        queued = sink.pending
        start = time.perf_counter()
        sink.flush()
        elapsed = time.perf_counter() - start
        print(f"{'writing (one transaction per 500)':40s} {queued / elapsed:8.0f} events/s ({queued} events, "
              f"{elapsed:.2f} s, {engine.dialect.name})")
        engine.dispose()


if __name__ == "__main__":
    main()
