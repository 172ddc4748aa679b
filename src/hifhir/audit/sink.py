"""Writes audit records off the request path: a background thread takes what requests queued and writes it every
FLUSH_INTERVAL_S, or as soon as a batch is full, in one transaction per batch: the events' keys in one statement,
then the events and their entities in bulk (COPY on PostgreSQL, one INSERT … SELECT FROM json_each per table on SQLite).

The request only appends a record to an in-memory queue (a few microseconds). The price is that a crash of the
process loses what was queued and not yet written — at most FLUSH_INTERVAL_S of events (README "Audit trail").
Nothing is dropped silently otherwise: when the queue is full the request writes the queue itself (backpressure),
a failed write is retried, and records are discarded only past a hard memory limit while the database refuses
them, with an error logged for each discarded batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Container
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import OperationalError

from hifhir.audit.events import AuditRecord, authentication_record, record_for
from hifhir.auth.throttle import client_address
from hifhir.store.db import transaction
from hifhir.store.tables import audit_entity, audit_event

log = logging.getLogger("hifhir.audit")

FLUSH_INTERVAL_S = 0.2
BATCH_SIZE = 500
MAX_PENDING = 20_000  # beyond this the request writes the queue itself before going on
HARD_LIMIT = 200_000  # beyond this (the database refusing writes for long) records are discarded, loudly
IDLE_EXIT_S = 30.0  # a writer thread with nothing to do ends; the next record starts another
RETRY_PAUSE_S = 1.0

_INSERT_EVENTS = insert(audit_event).returning(audit_event.c.pk, sort_by_parameter_order=True)
_INSERT_ENTITIES = insert(audit_entity)
_EVENT_FIELDS = ("recorded", "action", "subtype", "outcome", "status", "username", "client_id",
                 "source_address", "user_agent", "resource_type", "query", "description")
_ENTITY_FIELDS = ("event_pk", "position", "resource_type", "resource_id", "version_id")
_EVENT_COLUMNS = ", ".join(_EVENT_FIELDS)
_ENTITY_COLUMNS = ", ".join(_ENTITY_FIELDS)


def _clip(value: str | None, size: int) -> str | None:
    """Fits a value to its column (PostgreSQL refuses longer strings and NUL characters: one bad value must not
    cost the whole batch)."""
    if value is None:
        return None
    return value.replace("\x00", "")[:size]


class AuditSink:
    def __init__(self, engine: Engine, trusted_proxies: Container[str] = frozenset(), *,
                 flush_interval_s: float = FLUSH_INTERVAL_S, batch_size: int = BATCH_SIZE,
                 max_pending: int = MAX_PENDING) -> None:
        self._engine = engine
        self._trusted_proxies = trusted_proxies
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._pending: deque[AuditRecord] = deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one batch written at a time; flush() waits for the one in flight
        self._state_lock = threading.Lock()
        self._running = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- the request side ----------------------------------------------------------------------------------

    def observe(self, request: Any, response: Any) -> None:
        """Queues the audit record of a FHIR request and its answer, if it is audited."""
        try:
            record = record_for(request, response)
            if record is not None:
                record.address = self.address(request)
                self.put(record)
        except Exception:  # the answer goes out whatever happens here; the failure is logged, never hidden
            log.exception("audit trail: no record for %s %s", request.method, request.path)

    def authentication(self, request: Any, status: int, *, username: str | None = None,
                       client_id: str | None = None) -> None:
        """A login or an OAuth2 client authentication (status 200 succeeded; anything else failed)."""
        try:
            self.put(authentication_record(status, username, client_id, self.address(request),
                                           request.headers.get("user-agent"), f"{request.method} {request.path}"))
        except Exception:  # as observe(): the login is answered whatever happens here
            log.exception("audit trail: no record of the authentication on %s", request.path)

    def address(self, request: Any) -> str:
        """Where the request came from: the TCP peer (HttpRequest.host, from the ASGI scope `client`), or the
        client a trusted reverse proxy forwarded it for."""
        return client_address(request.host, request.headers.get("x-forwarded-for"), self._trusted_proxies)

    def put(self, record: AuditRecord) -> None:
        pending = self._pending
        pending.append(record)
        n = len(pending)
        if n >= self._batch_size:
            if n >= self._max_pending:
                log.warning("audit queue full (%d records): the request writes it", n)
                self.flush()
                return
            self._wake.set()
        if not self._running:
            self._start()

    # --- writing -------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Writes everything queued so far, and waits for the batch the thread may be writing."""
        while True:
            with self._write_lock:
                batch = self._take()
                if not batch:
                    return
                if not self._write(batch):
                    return  # the database refuses: what was taken is queued again, the thread retries

    def close(self) -> None:
        """At shutdown: stops the thread and writes what is left."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=10)
        self.flush()
        self._stopping = False  # a record after this (another lifespan of the same app) starts a new thread

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _take(self) -> list[AuditRecord]:
        pending = self._pending
        batch = []
        for _ in range(min(self._batch_size, len(pending))):
            batch.append(pending.popleft())
        return batch

    def _write(self, batch: list[AuditRecord]) -> bool:
        """One transaction for the batch; False when the database refused it (the batch is queued again)."""
        try:
            self._insert(batch)
            return True
        except Exception as exc:  # the bulk paths raise the drivers' own errors, not SQLAlchemy's
            if _transient(exc):
                log.exception("audit trail: the database refused %d events; retrying", len(batch))
                self._requeue(batch)
                return False
            # A value the database rejects (a bug, since values are clipped): write the others one by one.
            log.exception("audit trail: a batch of %d events failed; writing them one by one", len(batch))
            for record in batch:
                try:
                    self._insert([record])
                except Exception:
                    log.exception("audit trail: event not written: %r", record)
            return True

    def _insert(self, batch: list[AuditRecord]) -> None:
        events = [(r.recorded, r.action, _clip(r.subtype, 32), r.outcome, r.status,
                   _clip(r.username, 50), _clip(r.client_id, 100), _clip(r.address, 64), _clip(r.user_agent, 200),
                   _clip(r.resource_type, 64), _clip(r.query, 100_000), _clip(r.description, 300)) for r in batch]
        with transaction(self._engine, write=True) as conn:
            dialect = conn.dialect.name
            if dialect not in _BULK:
                pks = [row[0] for row in conn.execute(
                    _INSERT_EVENTS, [dict(zip(_EVENT_FIELDS, e, strict=True)) for e in events])]
                entities = _entity_rows(pks, batch)
                if entities:
                    conn.execute(_INSERT_ENTITIES, [dict(zip(_ENTITY_FIELDS, e, strict=True)) for e in entities])
                return
            # Straight to the driver: SQLAlchemy's executemany costs ~80 µs of this process's CPU per event, the
            # drivers' bulk paths (COPY, json_each on SQLite) a few.
            keys, write = _BULK[dialect]
            driver = conn.connection.driver_connection
            pks = keys(driver, len(batch))
            write(driver, [(pk, *event) for pk, event in zip(pks, events, strict=True)], _entity_rows(pks, batch))

    def _requeue(self, batch: list[AuditRecord]) -> None:
        pending = self._pending
        if len(pending) + len(batch) > HARD_LIMIT:
            log.error("audit trail: %d events discarded: the database has refused writes for too long",
                      len(batch))
            return
        pending.extendleft(reversed(batch))

    # --- the writer thread ---------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._state_lock:
            if self._running or self._stopping:
                return
            self._running = True
            self._thread = threading.Thread(target=self._run, name="hifhir-audit", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            if not self._stopping:  # a close() writes what is queued now and ends the thread, whatever the interval
                self._wake.wait(self._interval)
            self._wake.clear()
            if self._pending:
                # What was queued goes now; then only full batches until the next tick: records that arrive while
                # a batch is written wait for the interval, or the writes would shrink to a few records each
                # (a transaction per handful of requests).
                first = True
                while first or len(self._pending) >= self._batch_size:
                    first = False
                    with self._write_lock:
                        batch = self._take()
                        ok = not batch or self._write(batch)
                    if not ok:
                        time.sleep(RETRY_PAUSE_S)
                        break
                idle_since = time.monotonic()
                continue
            if self._stopping or time.monotonic() - idle_since > IDLE_EXIT_S:
                with self._state_lock:
                    self._running = False
                    if not self._pending or self._stopping:
                        return
                    self._running = True



def _transient(exc: Exception) -> bool:
    """The database is busy or unreachable (worth retrying), as SQLAlchemy, sqlite3 and psycopg name it."""
    return isinstance(exc, OperationalError) or type(exc).__name__ == "OperationalError"


def _entity_rows(pks: list[int], batch: list[AuditRecord]) -> list[tuple[Any, ...]]:
    return [(pk, i, _clip(rtype, 64), _clip(rid, 64), version)
            for pk, record in zip(pks, batch, strict=True)
            for i, (rtype, rid, version) in enumerate(record.entities)]


def _postgresql_keys(driver: Any, n: int) -> list[int]:
    with driver.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence('audit_event', 'pk')) FROM generate_series(1, %s)", (n,))
        return [row[0] for row in cur.fetchall()]


def _postgresql_write(driver: Any, events: list[tuple[Any, ...]], entities: list[tuple[Any, ...]]) -> None:
    with driver.cursor() as cur:
        with cur.copy(f"COPY audit_event (pk, {_EVENT_COLUMNS}) FROM STDIN") as copy:
            for row in events:
                copy.write_row(row)
        if entities:
            with cur.copy(f"COPY audit_entity ({_ENTITY_COLUMNS}) FROM STDIN") as copy:
                for row in entities:
                    copy.write_row(row)


def _sqlite_keys(driver: Any, n: int) -> list[int]:
    # The transaction holds SQLite's write lock (BEGIN IMMEDIATE): no one else inserts until it commits.
    first = driver.execute("SELECT coalesce(max(pk), 0) + 1 FROM audit_event").fetchone()[0]
    return list(range(first, first + n))


def _json_rows_insert(table: str, columns: str, width: int) -> str:
    """An INSERT of every row of a JSON array of arrays bound as one parameter."""
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(width))
    return f"INSERT INTO {table} ({columns}) SELECT {values} FROM json_each(?)"


_SQLITE_INSERT_EVENTS = _json_rows_insert("audit_event", f"pk, {_EVENT_COLUMNS}", len(_EVENT_FIELDS) + 1)
_SQLITE_INSERT_ENTITIES = _json_rows_insert("audit_entity", _ENTITY_COLUMNS, len(_ENTITY_FIELDS))


def _sqlite_write(driver: Any, events: list[tuple[Any, ...]], entities: list[tuple[Any, ...]]) -> None:
    # A batch's rows go in one statement per table, as a JSON array SQLite unpacks (json_each), not by executemany:
    # sqlite3 gives up the GIL around each row's step and must win it back from the request thread, which on a busy
    # server keeps it for up to the switch interval (5 ms) each time. The writer then fell behind searches of twenty
    # patients (~2,300 a second a process) and its queue grew by thousands of records, tens of MB per process.
    # Multi-row VALUES statements were faster uncontended (66k events/s against 48k) but their text changes with the
    # batch's size, and sqlite3 keeps up to 128 of them prepared per connection: tens of MB a process.
    driver.execute(_SQLITE_INSERT_EVENTS, (json.dumps(events),))
    if entities:
        driver.execute(_SQLITE_INSERT_ENTITIES, (json.dumps(entities),))


_BULK = {"postgresql": (_postgresql_keys, _postgresql_write), "sqlite": (_sqlite_keys, _sqlite_write)}
