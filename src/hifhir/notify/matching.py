"""Matching: which subscriptions a write notifies, decided in the writing transaction (a `FLUSH_OBSERVERS` function
of fhir/kind.py), so that a notification row exists if and only if the change commits.

For each flush: the active subscriptions (status active or error: deliveries go on while in error, which is how a
subscription recovers) on the types written are found in a per-process cache, refreshed when the subscription table
changed — one aggregate over that small table per flush (count, Σ version, max last_updated: every subscription
write, even one whose transaction started earlier than another's, bumps a version), nothing more when no
subscription exists. A flush that itself writes subscriptions reads them afresh and does not cache what it saw
(it may roll back).

Each subscription's criteria is then evaluated by the search engine against the written resources of its type: one
`SELECT pk … WHERE pk IN (written) AND <criteria>` per subscription and kind in the batch (none for a criteria
without parameters). A flush that wrote one resource of the kind (an API write) runs `… WHERE pk = ? AND
<criteria>` compiled once and executed through the driver (store/fast.DriverQuery): building and executing the
query through SQLAlchemy cost more than the rest of the notification's work in the writing transaction.
Creates and updates match the resource as written; a delete matches the row as it was when deleted (a logical
delete keeps it: `Invoice?type=contribution` is told of a deleted contribution invoice, not of a deleted bill).
Each match enqueues one outbox row, topic `notify`, subject the Subscription id, payload: the resource's kind,
type, id, version and the event (create | update | delete).

Rights are checked at delivery, against the owner's rights then (delivery.py). A subscription past its `end` is
skipped, and one outbox row (payload `{"expire": true}`) has the delivery side turn it off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from hifhir.fhir.kind import FLUSH_OBSERVERS, ResourceKind, Written, now_us
from hifhir.notify.criteria import Criteria, CriteriaError, criteria_clauses, parse_criteria
from hifhir.outbox import enqueue
from hifhir.store.fast import DriverQuery, FastStatement
from hifhir.store.tables import is_current, subscription

log = logging.getLogger("hifhir.notify")

TOPIC = "notify"
KIND_NAME = "subscription"
LIVE = ("active", "error")  # the statuses that are notified
CHUNK = 5000  # written pks per matching query
EVENTS = {"create": "create", "put": "create", "update": "update", "delete": "delete"}

_t = subscription
_FRESHNESS = FastStatement(select(func.count(), func.coalesce(func.sum(_t.c.version_id), 0),
                                  func.coalesce(func.max(_t.c.last_updated), 0)).select_from(_t))
_LIVE = select(_t.c.pk, _t.c.id, _t.c.resource_type, _t.c.criteria, _t.c.end_instant).where(
    is_current(_t), _t.c.status.in_(LIVE))


@dataclass(frozen=True, slots=True)
class Live:
    """An active subscription as matching needs it."""

    pk: int
    id: str
    end_instant: int | None
    criteria: Criteria


@dataclass(slots=True)
class Snapshot:
    key: tuple[int, int, int]
    by_type: dict[str, list[Live]]
    expiry_reported: set[int] = field(default_factory=set)


_cached: Snapshot | None = None
_unparsable_logged: set[tuple[int, str]] = set()

# (criteria, kind name, deleted, dialect) → (expires at, day built, query on one written row, or None: cannot match,
# or _GENERIC: only the generic path can run it). A criteria's clauses may hold today's date (a Contract status) or
# the time (`ap`): an entry serves the day it was built on, a minute at most.
_ONE_ROW_TTL_S = 60.0
_GENERIC = object()
_one_row: dict[tuple[str, str, bool, str], tuple[float, date, Any]] = {}


def _load(conn: Connection, key: tuple[int, int, int]) -> Snapshot:
    by_type: dict[str, list[Live]] = {}
    for row in conn.execute(_LIVE):
        try:
            criteria = parse_criteria(row.criteria)
        except CriteriaError as exc:
            # Accepted when written, refused now (a parameter this version no longer has): never matches.
            if (row.pk, row.criteria) not in _unparsable_logged:
                _unparsable_logged.add((row.pk, row.criteria))
                log.warning("subscription %s: criteria %r no longer parses (%s); it matches nothing", row.id,
                            row.criteria, exc)
            continue
        by_type.setdefault(criteria.resource_type, []).append(
            Live(int(row.pk), row.id, row.end_instant, criteria))
    return Snapshot(key, by_type)


# How long a process trusts its subscriptions without asking the table again: a subscription written in this
# process is seen at once (forget()), one written by another process within this delay — a write path pays no
# query for notifications it has no subscription for.
FRESHNESS_S = 1.0
_checked_at = 0.0


def snapshot(conn: Connection, *, cache: bool = True) -> Snapshot:
    """The live subscriptions as this transaction sees them (from the process cache when still fresh)."""
    global _cached, _checked_at
    found = _cached
    if cache and found is not None and time.monotonic() - _checked_at < FRESHNESS_S:
        return found
    count, versions, latest = _FRESHNESS.execute(conn, {})[0]
    key = (int(count), int(versions), int(latest))
    if cache:
        _checked_at = time.monotonic()
    if count == 0:
        empty = Snapshot(key, {})
        if cache:
            _cached = empty
        return empty
    if cache and found is not None and found.key == key:
        return found
    loaded = _load(conn, key)
    if cache:
        _cached = loaded
        _one_row.clear()  # the subscriptions changed: drop the queries of those that may be gone
    return loaded


def forget() -> None:
    """Drop the process cache (tests)."""
    global _cached
    _cached = None
    _one_row.clear()


def on_flush(conn: Connection, written: list[Written]) -> None:
    """The FLUSH_OBSERVERS hook: enqueue a notification for each (subscription, written resource) that matches."""
    touches_subscriptions = any(w.kind.name == KIND_NAME for w in written)
    if touches_subscriptions:
        forget()  # this process's next writes ask the table again (they see the change once it is committed)
    others = [w for w in written if w.kind.name != KIND_NAME] if touches_subscriptions else written
    if not others:
        return
    snap = snapshot(conn, cache=not touches_subscriptions)
    if not snap.by_type:
        return
    by_type: dict[str, list[Written]] = {}
    for w in others:
        if w.kind.resource_type in snap.by_type:
            by_type.setdefault(w.kind.resource_type, []).append(w)
    if not by_type:
        return
    now = now_us()
    for resource_type, changes in by_type.items():
        for sub in snap.by_type[resource_type]:
            if sub.end_instant is not None and sub.end_instant <= now:
                if sub.pk not in snap.expiry_reported:
                    snap.expiry_reported.add(sub.pk)
                    enqueue(conn, TOPIC, sub.id, {"expire": True})
                continue
            for w in matching(conn, sub.criteria, changes):
                payload: dict[str, Any] = {"kind": w.kind.name, "type": resource_type, "id": w.id,
                                           "version": w.version, "event": EVENTS.get(w.operation, w.operation)}
                if sub.criteria.involved_kinds:
                    payload["via"] = sorted(sub.criteria.involved_kinds)
                enqueue(conn, TOPIC, sub.id, payload)


def _one_row_query(conn: Connection, kind: ResourceKind, criteria: Criteria, deleted: bool) -> Any:
    """The criteria on one written row of `kind` (bind `matched_pk`; current rows only, but for a delete): a
    DriverQuery, None when the kind cannot match, or _GENERIC when the statement needs SQLAlchemy (a list of
    values expanded at execution)."""
    key = (criteria.text, kind.name, deleted, conn.dialect.name)
    clock, day = time.monotonic(), date.today()
    hit = _one_row.get(key)
    if hit is not None and hit[0] > clock and hit[1] == day:
        return hit[2]
    clauses = criteria_clauses(kind, criteria.request)
    query: Any = None
    if clauses is not None:
        t = kind.table
        wanted = t.c.pk == bindparam("matched_pk")
        statement = select(t.c.pk).where(wanted if deleted else wanted & is_current(t), *clauses)
        compiled = statement.compile(dialect=conn.dialect)
        # DriverQuery runs the SQL as compiled, with the values the clauses hold: no list expanded at execution,
        # no value left to bind but the row's pk.
        values = compiled.construct_params(_check=False)
        plain = not compiled.post_compile_params and not compiled.literal_execute_params and all(
            v is not None for k, v in values.items() if k != "matched_pk")
        query = DriverQuery(statement) if plain else _GENERIC
    _one_row[key] = (clock + _ONE_ROW_TTL_S, day, query)
    return query


def matching(conn: Connection, criteria: Criteria, changes: Iterable[Written]) -> list[Written]:
    """The written resources (all of one type) the criteria selects: one query per kind written, none when the
    criteria has no parameters."""
    if criteria.unconditional:
        return list(changes)
    by_kind: dict[str, tuple[ResourceKind, dict[int, Written]]] = {}
    for w in changes:
        by_kind.setdefault(w.kind.name, (w.kind, {}))[1][w.pk] = w
    out: list[Written] = []
    for kind, by_pk in by_kind.values():
        if len(by_pk) == 1:
            (w,) = by_pk.values()
            query = _one_row_query(conn, kind, criteria, w.operation == "delete")
            if query is None:
                continue
            if query is not _GENERIC:
                if query.rows(conn, {"matched_pk": w.pk}):
                    out.append(w)
                continue
        clauses = criteria_clauses(kind, criteria.request)
        if clauses is None:
            continue
        t = kind.table
        hits: set[int] = set()
        pks = sorted(by_pk)
        for start in range(0, len(pks), CHUNK):  # a bulk load's flush: stay under SQLite's bound-variable limit
            part = pks[start:start + CHUNK]
            live = [pk for pk in part if by_pk[pk].operation != "delete"]
            gone = [pk for pk in part if by_pk[pk].operation == "delete"]
            wanted: list[Any] = []
            if live:
                wanted.append(t.c.pk.in_(live) & is_current(t))
            if gone:
                wanted.append(t.c.pk.in_(gone))
            condition = wanted[0] if len(wanted) == 1 else wanted[0] | wanted[1]
            hits.update(int(pk) for pk in conn.execute(select(t.c.pk).where(condition, *clauses)).scalars())
        out.extend(w for pk, w in by_pk.items() if pk in hits)
    return out


FLUSH_OBSERVERS.append(on_flush)
