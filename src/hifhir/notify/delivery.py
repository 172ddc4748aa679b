"""Delivery: the outbox handler of topic `notify` (matching.py enqueues the rows), run by the outbox worker
outside any transaction, with the worker's retries and backoff (outbox/).

One attempt:
1. The subscription is read as it is now (its endpoint, headers and secret may have changed since the match). Gone
   or `off` → nothing is sent (the row is done: a subscription switched off is not owed what it missed). Past its
   `end` → it is turned off, nothing sent.
2. The owner must still hold the read right of the resource's kind (and of the kinds its criteria reads through),
   and the resource must be inside the owner's location scope (auth/scope.py) as it is at delivery; otherwise
   nothing is sent (logged). Elements the kind restricts to a right the owner lacks are removed from a
   full payload, as for a read.
3. POST to the endpoint, re-checked against the allow-list and resolved to a checked address (endpoints.py,
   transport.py). Body: empty (`channel.payload` absent: the IG's empty notification, the subscriber reads the
   resource itself) or the resource's version as stored (`application/fhir+json`; a delete still has an empty
   body). Headers: the subscription's `channel.header` (but `X-Hifhir-Secret`), then
   - `Content-Type: application/fhir+json`, `User-Agent: hifhir`
   - `X-Hifhir-Delivery`: the outbox row id, the same at every attempt (the receiver's deduplication key: delivery
     is at least once)
   - `X-Hifhir-Subscription`: the Subscription id; `X-Hifhir-Event`: create | update | delete;
     `X-Hifhir-Resource`: `Type/id/_history/version`
   - `X-Hifhir-Timestamp`: Unix seconds of this attempt
   - `X-Hifhir-Signature`: `sha256=` + hex HMAC-SHA256, keyed with the subscription's secret, of
     `<timestamp>.<delivery id>.<resource>.` followed by the body bytes — so an empty notification too is bound to
     its delivery and resource, and a receiver can refuse replays (old timestamp, seen delivery id).
   The secret is the value of an `X-Hifhir-Secret` header the client puts in `channel.header` (kept as the key,
   never sent, never shown back); without one the server generates a secret nobody can read, and the signature
   cannot be verified — subscribers who want to verify supply theirs.
4. A 2xx answer is a delivery: the subscription's consecutive failures go back to 0 and, if it was `error`, it is
   `active` again (`error` cleared, a new version). Anything else (refused endpoint, no connection, timeout,
   another status; redirects are not followed) is a failure: `failures` + 1, and at `HIFHIR_NOTIFY_MAX_FAILURES`
   the subscription becomes `error` with `Subscription.error` saying why (a new version); the row is retried with
   the outbox backoff (RetryLater) and, after the outbox's last attempt, stays `failed` for an operator to requeue.

Rows of one subscription are delivered concurrently and retried independently: a receiver orders changes by the
resource's version, not by arrival.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import weakref
from typing import Any, NoReturn

import orjson
from sqlalchemy import Connection, Engine, bindparam, select, update

from hifhir import config
from hifhir.auth import scope as location_scope
from hifhir.auth.users import Principal, load_principal
from hifhir.fhir.kind import WriteContext, without_restricted
from hifhir.notify import transport
from hifhir.notify.endpoints import EndpointRefused, check_endpoint
from hifhir.notify.matching import KIND_NAME, LIVE, TOPIC
from hifhir.outbox import Delivery, PermanentFailure, RetryLater, register
from hifhir.outbox.http import HttpFailure
from hifhir.store.db import reader, transaction
from hifhir.store.fast import FastStatement
from hifhir.store.tables import is_current, subscription
from hifhir.store.tables import resource_version as rv

log = logging.getLogger("hifhir.notify")

NOTIFY_USER = "hifhir-notify"  # user_name of the Subscription versions deliveries write (error, recovery, off)
FHIR_JSON = "application/fhir+json"
SECRET_HEADER = "x-hifhir-secret"
PRINCIPAL_TTL_S = 5.0
ERROR_TEXT_MAX = 500

_t = subscription
_SUBSCRIPTION = FastStatement(select(
    _t.c.pk, _t.c.id, _t.c.status, _t.c.endpoint, _t.c.headers, _t.c.payload, _t.c.end_instant, _t.c.failures,
    _t.c.owner, _t.c.secret, _t.c.deleted).where(_t.c.id == bindparam("id")))
_BODY = FastStatement(select(rv.c.body).where(rv.c.res_type == bindparam("type"), rv.c.res_id == bindparam("id"),
                                              rv.c.version == bindparam("version")))


# --- the owner's rights (cached briefly: a delivery should not cost a join per row) -------------------------------

_principals: weakref.WeakKeyDictionary[Engine, dict[str, tuple[float, Principal | None]]] = \
    weakref.WeakKeyDictionary()
_principals_guard = threading.Lock()


def _principal(engine: Engine, conn: Connection, username: str) -> Principal | None:
    with _principals_guard:
        cache = _principals.setdefault(engine, {})
        hit = cache.get(username)
    clock = time.monotonic()
    if hit is not None and hit[0] > clock:
        return hit[1]
    principal = load_principal(conn, username)
    with _principals_guard:
        cache[username] = (clock + PRINCIPAL_TTL_S, principal)
    return principal


def forget_principals() -> None:
    """Drop the cached owners' rights (tests that change them)."""
    with _principals_guard:
        _principals.clear()


def _may_read(principal: Principal | None, kind_names: list[str]) -> bool:
    from hifhir.auth.matrix import authorize
    from hifhir.fhir.registry import KINDS

    if principal is None:
        return False  # an owner who no longer exists (or is inactive) reads nothing
    return all(name in KINDS and authorize(principal, KINDS[name], "read") for name in kind_names)


def _in_scope(conn: Connection, principal: Principal, kind_name: str, res_id: str) -> bool:
    """Is the resource inside the owner's location scope now (auth/scope.py)? A scoped owner is told only of what
    it could read; an unscoped one costs no query."""
    from hifhir.fhir.registry import KINDS

    if not location_scope.is_scoped(principal):
        return True
    return location_scope.visible_id(conn, KINDS[kind_name], principal, res_id)


def _visible(principal: Principal, kind_name: str, body: bytes) -> bytes:
    """The body as the owner may read it: elements restricted to a right the owner lacks removed (api/rest.py
    visible_body, for a user who is not making a request)."""
    from hifhir.fhir.registry import KINDS

    return without_restricted(body, KINDS[kind_name].restricted_elements, principal.has)


# --- signing ----------------------------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, delivery_id: str, resource: str, body: bytes) -> str:
    """The X-Hifhir-Signature value (see the module docstring)."""
    message = f"{timestamp}.{delivery_id}.{resource}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def stored_headers(raw: bytes | None) -> list[tuple[str, str]]:
    return [(str(n), str(v)) for n, v in orjson.loads(raw)] if raw else []


# --- the handler ------------------------------------------------------------------------------------------------


def deliver(delivery: Delivery) -> None:
    payload = delivery.payload if isinstance(delivery.payload, dict) else None
    if payload is None or not delivery.subject:
        raise PermanentFailure("notify row without subscription or payload")
    engine = delivery.engine
    # Reads without a transaction of their own (two round trips fewer on PostgreSQL): the subscription is one row,
    # and the body comes from the append-only history by (id, version).
    with reader(engine).connect() as conn:
        rows = _SUBSCRIPTION.execute(conn, {"id": delivery.subject})
        sub = rows[0] if rows else None
        if sub is None or sub.deleted:
            log.info("notification %s: subscription %s is gone; not sent", delivery.id, delivery.subject)
            return
        expired = sub.end_instant is not None and sub.end_instant <= time.time_ns() // 1000
        if payload.get("expire") or expired:
            if expired and sub.status != "off":
                _set_status(engine, int(sub.pk), "off", None, only_from=LIVE)
            return
        if sub.status not in LIVE:
            log.info("notification %s: subscription %s is %s; not sent", delivery.id, sub.id, sub.status)
            return
        kind_name, rtype, res_id, version = (payload.get("kind"), payload.get("type"), payload.get("id"),
                                             payload.get("version"))
        event = str(payload.get("event") or "update")
        if not (isinstance(kind_name, str) and isinstance(rtype, str) and isinstance(res_id, str)
                and isinstance(version, int)):
            raise PermanentFailure("notify row without the resource it is about")
        principal = _principal(engine, conn, sub.owner) if sub.owner else None
        if not _may_read(principal, [kind_name, *payload.get("via", ())]):
            log.info("notification %s: the owner (%s) of subscription %s may not read %s/%s; not sent", delivery.id,
                     sub.owner, sub.id, rtype, res_id)
            return
        assert principal is not None
        if not _in_scope(conn, principal, kind_name, res_id):
            log.info("notification %s: %s/%s is outside the location scope of the owner (%s) of subscription %s; "
                     "not sent", delivery.id, rtype, res_id, sub.owner, sub.id)
            return
        body = b""
        if sub.payload == FHIR_JSON and event != "delete":
            found = _BODY.execute(conn, {"type": rtype, "id": res_id, "version": version})
            if not found or found[0].body is None:
                raise PermanentFailure(f"{rtype}/{res_id} version {version} is not in the history")
            stored = found[0].body
            body = _visible(principal, kind_name, bytes(stored))
    resource = f"{rtype}/{res_id}/_history/{version}"
    timestamp = str(int(time.time()))
    headers = {name: value for name, value in stored_headers(sub.headers) if name.lower() != SECRET_HEADER}
    headers.update({
        "Content-Type": FHIR_JSON, "User-Agent": "hifhir", "X-Hifhir-Delivery": delivery.id,
        "X-Hifhir-Subscription": sub.id, "X-Hifhir-Event": event, "X-Hifhir-Resource": resource,
        "X-Hifhir-Timestamp": timestamp,
        "X-Hifhir-Signature": signature(sub.secret, timestamp, delivery.id, resource, body)})
    try:
        target = check_endpoint(sub.endpoint)
        answer = transport.post(target, body, headers, timeout=config.NOTIFY.timeout_s)
    except EndpointRefused as exc:
        _failed(engine, sub, f"endpoint refused: {exc}")
    except HttpFailure as exc:
        _failed(engine, sub, f"endpoint unreachable: {exc}")
    else:
        if not answer.ok:
            text = answer.body[:200].decode("utf-8", "replace")
            _failed(engine, sub, f"endpoint answered HTTP {answer.status}" + (f": {text}" if text else ""))
        if sub.failures or sub.status == "error":
            _recovered(engine, int(sub.pk))


register(TOPIC, deliver)


# --- the subscription's state -------------------------------------------------------------------------------------


def _failed(engine: Engine, sub: Any, reason: str) -> NoReturn:
    """Count a failed delivery; at the limit the subscription is `error`. Always raises RetryLater."""
    with transaction(engine, write=True) as conn:
        row = conn.execute(update(_t).where(_t.c.pk == sub.pk, is_current(_t))
                           .values(failures=_t.c.failures + 1).returning(_t.c.failures, _t.c.status)).first()
        if row is not None and row.status == "active" and row.failures >= config.NOTIFY.max_failures:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            note = f"{row.failures} consecutive deliveries failed (last at {when}: {reason})"[:ERROR_TEXT_MAX]
            _new_version(conn, int(sub.pk), {"status": "error", "error": note})
            log.warning("subscription %s is in error: %s", sub.id, note)
    raise RetryLater(reason)


def _recovered(engine: Engine, pk: int) -> None:
    with transaction(engine, write=True) as conn:
        row = conn.execute(update(_t).where(_t.c.pk == pk, is_current(_t)).values(failures=0)
                           .returning(_t.c.status, _t.c.id)).first()
        if row is not None and row.status == "error":
            _new_version(conn, pk, {"status": "active", "error": None})
            log.info("subscription %s delivers again: active", row.id)


def _set_status(engine: Engine, pk: int, status: str, error: str | None, *, only_from: tuple[str, ...]) -> None:
    with transaction(engine, write=True) as conn:
        current = conn.execute(select(_t.c.status).where(_t.c.pk == pk, is_current(_t))).scalar()
        if current in only_from:
            _new_version(conn, pk, {"status": status, "error": error})


def _new_version(conn: Connection, pk: int, values: dict[str, Any]) -> None:
    ctx = WriteContext(conn, NOTIFY_USER)
    ctx.update(_t, pk, values)
    ctx.mark(KIND_NAME, pk)
    ctx.flush()
