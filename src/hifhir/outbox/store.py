"""The outbox table's statements: enqueue in the caller's transaction, claim due rows, record what happened.

A row is `pending` until its handler succeeds (`done`) or gives up (`failed`). `attempts` counts the claims of the
row — it is incremented when a worker claims it, before the handler runs — and doubles as a fencing token: a worker
records an outcome only if the row still carries the attempt number it claimed, so that a worker whose lease ran
out (and whose row another worker took) cannot overwrite the newer attempt's outcome.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, insert, select, update

from hifhir.config import OutboxConfig
from hifhir.store.db import after_commit
from hifhir.store.fast import FastStatement
from hifhir.store.tables import outbox

log = logging.getLogger("hifhir.outbox")

PENDING, DONE, FAILED = "pending", "done", "failed"
ERROR_MAX = 2000  # characters of an error kept in last_error
SUBJECT_MAX, TOPIC_MAX = 64, 40
# Per engine, the wake-up events of the workers of this process running on it (outbox/worker.py): set once a
# transaction that enqueued has committed.
_wakers: weakref.WeakKeyDictionary[Engine, set[threading.Event]] = weakref.WeakKeyDictionary()
_wakers_guard = threading.Lock()


def subscribe(engine: Engine, wake: threading.Event) -> None:
    with _wakers_guard:
        _wakers.setdefault(engine, set()).add(wake)


def unsubscribe(engine: Engine, wake: threading.Event) -> None:
    with _wakers_guard:
        _wakers.get(engine, set()).discard(wake)


def _wake_workers(engine: Engine) -> None:
    with _wakers_guard:
        events = list(_wakers.get(engine, ()))
    for wake in events:
        wake.set()


def now_us() -> int:
    return time.time_ns() // 1000


_INSERT = FastStatement(insert(outbox).values(
    id=bindparam("id"), topic=bindparam("topic"), subject=bindparam("subject"), payload=bindparam("payload"),
    status=PENDING, attempts=0, next_attempt=bindparam("next_attempt"), locked_until=0,
    created=bindparam("created")))


def enqueue(conn: Connection, topic: str, subject: str | None, payload: Any = None, *, now: int | None = None,
            delay_s: float = 0.0) -> str:
    """Write a delivery in the caller's transaction (it exists only if that transaction commits); returns its id,
    which the handler gets and which stays the same across retries (the receiver's deduplication key)."""
    if not topic or len(topic) > TOPIC_MAX:
        raise ValueError(f"outbox topic must have 1 to {TOPIC_MAX} characters")
    if subject is not None and len(subject) > SUBJECT_MAX:
        raise ValueError(f"outbox subject must have at most {SUBJECT_MAX} characters")
    created = now if now is not None else now_us()
    row_id = str(uuid.uuid4())
    _INSERT.execute_many(conn, [{
        "id": row_id, "topic": topic, "subject": subject,
        "payload": None if payload is None else orjson.dumps(payload),
        "next_attempt": created + int(delay_s * 1_000_000), "created": created}])
    # The workers of this process start on it once it is committed; other processes' find it at their next poll.
    after_commit(conn, functools.partial(_wake_workers, conn.engine))
    return row_id


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row a worker holds: what the handler gets, and the attempt number that fences the outcome."""

    pk: int
    id: str
    topic: str
    subject: str | None
    payload: Any
    attempt: int
    created: int


def _due(now: Any, topics: Any) -> Any:
    t = outbox
    return and_(t.c.status == PENDING, t.c.next_attempt <= now, t.c.locked_until <= now, t.c.topic.in_(topics))


@functools.cache
def _any_due_statement(n_topics: int) -> FastStatement:
    t = outbox
    return FastStatement(select(t.c.pk).where(_due(bindparam("now"), [bindparam(f"t{i}") for i in range(n_topics)]))
                         .limit(1))


def any_due(conn: Connection, topics: Collection[str], now: int) -> bool:
    """Whether a claim would find something: a read without any lock, so that idle polling costs one index probe
    through the driver (and, on SQLite, never queues behind the writers)."""
    params: dict[str, Any] = {f"t{i}": topic for i, topic in enumerate(topics)}
    return bool(_any_due_statement(len(params)).execute(conn, {"now": now, **params}))


@functools.cache
def _claim_statement(n_topics: int) -> FastStatement:
    t = outbox
    now = bindparam("now")
    chosen = (select(t.c.pk).where(_due(now, [bindparam(f"t{i}") for i in range(n_topics)]))
              .order_by(t.c.next_attempt, t.c.pk).limit(bindparam("limit")).with_for_update(skip_locked=True))
    return FastStatement(
        update(t).where(t.c.pk.in_(chosen.scalar_subquery()))
        .values(attempts=t.c.attempts + 1, locked_until=bindparam("until"))
        .returning(t.c.pk, t.c.id, t.c.topic, t.c.subject, t.c.payload, t.c.attempts, t.c.created,
                   t.c.next_attempt))


def claim(conn: Connection, topics: Collection[str], *, now: int, lease_s: float, limit: int) -> list[Claimed]:
    """Lease up to `limit` due rows of the given topics, oldest due first. Run it in a write transaction of its own
    or with the outcomes of the previous batch (on SQLite under the writer lock, which serialises claims); on
    PostgreSQL `FOR UPDATE SKIP LOCKED` lets workers claim side by side, and the lease in `locked_until` keeps the
    rows theirs after the claim commits. Through the driver: it runs inside SQLite's writer lock."""
    params: dict[str, Any] = {f"t{i}": topic for i, topic in enumerate(topics)}
    rows = _claim_statement(len(params)).execute(
        conn, {**params, "now": now, "until": now + int(lease_s * 1_000_000), "limit": limit})
    # RETURNING comes in no particular order: the handlers run in the order the rows fell due
    return [Claimed(int(r.pk), r.id, r.topic, r.subject,
                    None if r.payload is None else orjson.loads(bytes(r.payload)), int(r.attempts), int(r.created))
            for r in sorted(rows, key=lambda r: (r.next_attempt, r.pk))]


def backoff_us(attempt: int, config: OutboxConfig, rng: random.Random | None = None) -> int:
    """The wait after failed attempt n (1-based): base × 2^(n−1), at most the cap, ± the jitter fraction."""
    wait = min(config.backoff_cap_s, config.backoff_base_s * 2.0 ** max(attempt - 1, 0))
    if config.jitter:
        wait *= 1.0 + (rng or random).uniform(-config.jitter, config.jitter)
    return int(max(wait, 0.0) * 1_000_000)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one claimed attempt: error None = done; permanent = no retry whatever the attempts."""

    row: Claimed
    error: str | None = None
    permanent: bool = False


_FENCE = and_(outbox.c.pk == bindparam("row_pk"), outbox.c.attempts == bindparam("attempt"),
              outbox.c.status == PENDING)
# Through the driver (they run inside SQLite's writer lock); RETURNING says whether the fence held.
_DONE = FastStatement(update(outbox).where(_FENCE).values(status=DONE, locked_until=0, finished=bindparam("now"))
                      .returning(outbox.c.pk))
_RETRY = FastStatement(update(outbox).where(_FENCE).values(
    locked_until=0, next_attempt=bindparam("next_attempt"), last_error=bindparam("error")).returning(outbox.c.pk))
_FAILED = FastStatement(update(outbox).where(_FENCE).values(
    status=FAILED, locked_until=0, last_error=bindparam("error"), finished=bindparam("now")).returning(outbox.c.pk))


def record(conn: Connection, outcomes: Sequence[Outcome], config: OutboxConfig, *, now: int) -> list[str]:
    """Record the outcomes of claimed attempts (one write transaction for a batch); returns each row's new status
    (or 'lost' when its lease was taken over meanwhile: the newer attempt decides)."""
    statuses: list[str] = []
    for o in outcomes:
        params: dict[str, Any] = {"row_pk": o.row.pk, "attempt": o.row.attempt, "now": now}
        if o.error is None:
            statement, status = _DONE, DONE
        elif o.permanent or o.row.attempt >= config.max_attempts:
            statement, status = _FAILED, FAILED
            params["error"] = o.error[:ERROR_MAX]
        else:
            statement, status = _RETRY, PENDING
            params.update(error=o.error[:ERROR_MAX], next_attempt=now + backoff_us(o.row.attempt, config))
        if len(statement.execute(conn, params)) != 1:
            log.warning("outbox %s %s: attempt %d finished after its lease was taken over; its outcome (%s) is "
                        "dropped", o.row.topic, o.row.id, o.row.attempt, status)
            status = "lost"
        statuses.append(status)
    return statuses


def requeue_failed(conn: Connection, topic: str | None = None, *, now: int | None = None) -> int:
    """Give failed rows a fresh set of attempts (after the cause was fixed); returns how many."""
    t = outbox
    condition = t.c.status == FAILED
    if topic is not None:
        condition = and_(condition, t.c.topic == topic)
    return int(conn.execute(update(t).where(condition).values(
        status=PENDING, attempts=0, next_attempt=now if now is not None else now_us(), locked_until=0,
        finished=None)).rowcount)


def purge_done(conn: Connection, *, older_than: int) -> int:
    """Delete delivered rows finished before `older_than` (µs); failed rows stay for an operator to see."""
    t = outbox
    return int(conn.execute(delete(t).where(t.c.status == DONE, t.c.finished < older_than)).rowcount)


def counts(conn: Connection) -> dict[str, int]:
    """Rows by status (for `hifhir worker --status` and the tests)."""
    t = outbox
    return {str(status): int(n) for status, n in
            conn.execute(select(t.c.status, func.count()).group_by(t.c.status)).all()}
