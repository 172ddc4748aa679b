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
without parameters). Creates and updates match the resource as written; a delete matches the row as it was when
deleted (a logical delete keeps it: `Invoice?type=contribution` is told of a deleted contribution invoice, not of
a deleted bill). Each match enqueues one outbox row, topic `notify`, subject the Subscription id, payload: the
resource's kind, type, id, version and the event (create | update | delete).

Rights are checked at delivery, against the owner's rights then (delivery.py). A subscription past its `end` is
skipped, and one outbox row (payload `{"expire": true}`) has the delivery side turn it off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from hifhir.fhir.kind import FLUSH_OBSERVERS, ResourceKind, Written, now_us
from hifhir.notify.criteria import Criteria, CriteriaError, criteria_clauses, parse_criteria
from hifhir.outbox import enqueue
from hifhir.store.fast import FastStatement
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


def snapshot(conn: Connection, *, cache: bool = True) -> Snapshot:
    """The live subscriptions as this transaction sees them (from the process cache when still fresh)."""
    global _cached
    count, versions, latest = _FRESHNESS.execute(conn, {})[0]
    key = (int(count), int(versions), int(latest))
    if count == 0:
        return Snapshot(key, {})
    found = _cached
    if cache and found is not None and found.key == key:
        return found
    loaded = _load(conn, key)
    if cache:
        _cached = loaded
    return loaded


def forget() -> None:
    """Drop the process cache (tests)."""
    global _cached
    _cached = None


def on_flush(conn: Connection, written: list[Written]) -> None:
    """The FLUSH_OBSERVERS hook: enqueue a notification for each (subscription, written resource) that matches."""
    touches_subscriptions = any(w.kind.name == KIND_NAME for w in written)
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
