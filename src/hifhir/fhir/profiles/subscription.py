"""OpenIMISSubscription ↔ `subscription` (IG row 25; ig/README.md "Subscriptions and notifications"): FHIR R4
rest-hook subscriptions, notified through the outbox (src/hifhir/notify/: matching, delivery, allow-list).

Mapping:
* `criteria` — `Type?parameters`, a search on any supported type (Subscription itself excepted), parsed and checked
  by the search engine when written: an unknown type, parameter, modifier or value → 422 (Subscription.criteria).
  Its type is kept in `resource_type` (what writes are matched against).
* `channel.type` rest-hook only (the profile's pattern); `channel.endpoint` must pass the allow-list
  (notify/endpoints.py: https, or http to a host of HIFHIR_NOTIFY_ALLOW_HTTP; no internal address unless allowed)
  → 422 otherwise; `channel.payload` absent (the IG: an empty notification) or `application/fhir+json` (the
  resource's version is sent). The IG forbids payload (0..0); validation/corrections.py lifts that to 0..1 for the
  full-resource form the issue asks for.
* `channel.header` — each `Name: value` (or, as the openIMIS module's clients send it, a JSON object string
  `{"Name": "value", …}`), sent with every notification. Stored in `headers`, **never shown back**: reads, searches
  and the history show each header as `Name: [hidden]`. An update that sends `Name: [hidden]` keeps the stored value
  of that header (so a client can PUT back what it read); one that leaves a header out removes it. The header
  `X-Hifhir-Secret: <16–64 characters>` is the key of the notifications' HMAC signature (notify/delivery.py): kept
  as the `secret`, never sent as a header; without one the server generates a secret nobody can read. Refused
  (422): names that are not HTTP tokens, values with control characters, duplicates, and the headers a
  notification sets itself (Host, Content-Type, Content-Length, Connection, Transfer-Encoding, X-Hifhir-*, …).
* `status` — `requested` (the IG example) or `active` become `active` once the endpoint passed the allow-list (no
  handshake); `off` is the client's choice. `error` is the server's: set by deliveries after
  HIFHIR_NOTIFY_MAX_FAILURES consecutive failures, with `error`, and cleared by the next success. A client may send
  `error` back unchanged (GET-modify-PUT) while the subscription is in error; otherwise it is refused. Any other
  update clears the error and the failure count. `end` in the past → `off` (when written, or at the first delivery
  or write after it).
* `error` is the server's note; a value sent by a client is ignored. `reason` as sent. `contact` 0..0.

Rights (auth/matrix.py; openIMIS FHIR module, domain §4.3): read and search 158001, create 158002, update 158003,
delete 158004 (IMIS Administrator). The user who creates a subscription is its **owner**: only the owner (or an IMIS
Administrator) may update or delete it (403), as in openIMIS; the criteria must be a search the owner may run —
the read right of the type (of one of its kinds) and of every kind a chain or `_has` reads through (403,
Subscription.criteria) — and each notification is sent only if the owner may still read the resource then.
Subscriptions are listed to every holder of 158001, without their header values.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Row, func, literal_column, select

from hifhir.auth.users import Principal, load_principal
from hifhir.fhir.errors import FhirError, business_rule, invalid
from hifhir.fhir.kind import ResourceKind, WriteContext, instant, now_us, require
from hifhir.fhir.profiles.common import is_uuid
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import Clause, SearchParam, parse_date_range, token_param
from hifhir.notify import matching
from hifhir.notify.criteria import Criteria, CriteriaError, parse_criteria, probe
from hifhir.notify.delivery import FHIR_JSON, SECRET_HEADER, stored_headers
from hifhir.notify.endpoints import EndpointRefused, check_endpoint
from hifhir.store.tables import subscription

R = "Subscription"
HIDDEN = "[hidden]"  # what is shown instead of a stored header's value
STATUSES = ("requested", "active", "error", "off")
_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_VALUE_MAX, _HEADERS_MAX = 4096, 20
_SECRET_MIN, _SECRET_MAX = 16, 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Set by the notification itself, or meaningless / dangerous to let a subscriber choose.
_RESERVED = frozenset({"host", "content-type", "content-length", "connection", "transfer-encoding", "te",
                       "trailer", "upgrade", "keep-alive", "expect", "user-agent", "proxy-authorization",
                       "proxy-connection"})


def _err(message: str, expression: str) -> FhirError:
    return business_rule(message, f"{R}.{expression}")


# --- channel.header ---------------------------------------------------------------------------------------------


def _header_pairs(value: Any, i: int) -> list[tuple[str, str]]:
    where = f"channel.header[{i}]"
    if not isinstance(value, str):
        raise _err("A header is a string 'Name: value'", where)
    text = value.strip()
    if text.startswith("{"):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise _err("A header is 'Name: value', or a JSON object of string values", where)
        return [(str(k).strip(), v.strip()) for k, v in obj.items()]
    name, sep, rest = text.partition(":")
    if not sep:
        raise _err("A header is a string 'Name: value'", where)
    return [(name.strip(), rest.strip())]


def read_headers(values: Any, current: Row | None) -> tuple[list[tuple[str, str]], str | None]:
    """The headers to store (as sent, `[hidden]` values replaced by the stored ones) and the client's secret."""
    if values is None:
        values = []
    if not isinstance(values, list):
        raise _err("channel.header is a list of strings", "channel.header")
    before = {n.lower(): v for n, v in stored_headers(current.headers)} if current is not None else {}
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, value in enumerate(values):
        for name, text in _header_pairs(value, i):
            where, low = f"channel.header[{i}]", name.lower()
            if not _NAME_RE.match(name):
                raise _err(f"'{name[:64]}' is not an HTTP header name", where)
            if low in seen:
                raise _err(f"Header {name} is given twice", where)
            seen.add(low)
            if low in _RESERVED or (low.startswith("x-hifhir-") and low != SECRET_HEADER):
                raise _err(f"Header {name} is set by the notification itself; it cannot be chosen", where)
            if text == HIDDEN:
                if low not in before:
                    raise _err(f"Header {name} has no stored value to keep ('{HIDDEN}' keeps a stored value)",
                               where)
                text = before[low]
            # Latin-1 is what HTTP/1.1 (and http.client) can send; anything else would fail every delivery.
            if len(text) > _VALUE_MAX or any((ord(ch) < 32 and ch != "\t") or 127 <= ord(ch) < 160 or ord(ch) > 255
                                             for ch in text):
                raise _err(f"Header {name}: at most {_VALUE_MAX} Latin-1 characters, no control characters", where)
            if low == SECRET_HEADER and not _SECRET_MIN <= len(text) <= _SECRET_MAX:
                raise _err(f"The signing secret ({name}) has {_SECRET_MIN} to {_SECRET_MAX} characters", where)
            out.append((name, text))
    if len(out) > _HEADERS_MAX:
        raise _err(f"At most {_HEADERS_MAX} headers", "channel.header")
    secret = next((v for n, v in out if n.lower() == SECRET_HEADER), None)
    return out, secret


# --- search parameters ------------------------------------------------------------------------------------------


def _text_param(name: str, column: Any, *, prefix_default: bool, modifiers: frozenset[str], doc: str) -> SearchParam:
    """A string or uri parameter on a raw column, compared byte for byte on both engines (no LIKE: SQLite's ignores
    case): a prefix (string's default, uri's `:below`) or the whole value (`:exact`, uri's default)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        if len(value) > 2000 or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise invalid(f"Invalid value for '{expression}'", expression)
        if modifier == "below" or (modifier is None and prefix_default):
            return func.substr(column, 1, len(value)) == value  # type: ignore[no-any-return]
        return column == value  # type: ignore[no-any-return]

    return SearchParam(name, "string" if prefix_default else "uri", clause, modifiers, doc)


# --- the kind -----------------------------------------------------------------------------------------------------


class SubscriptionKind(ResourceKind):
    resource_type = R
    name = matching.KIND_NAME
    profile_id = "openimis-subscription"
    table = subscription
    code_column = None

    def __init__(self) -> None:
        t = subscription
        self.search_params = {
            **common_params(self),
            "status": token_param("status", t.c.status, codes={s: s for s in STATUSES},
                                  doc="requested | active | error | off"),
            "type": token_param("type", literal_column("'rest-hook'"), codes={"rest-hook": "rest-hook"},
                                doc="The channel type (rest-hook only)"),
            "criteria": _text_param("criteria", t.c.criteria, prefix_default=True, modifiers=frozenset({"exact"}),
                                    doc="The criteria (Type?parameters); starts with the value by default, so "
                                        "criteria=Invoice finds the subscriptions to invoices"),
            "url": _text_param("url", t.c.endpoint, prefix_default=False, modifiers=frozenset({"below"}),
                               doc="The channel endpoint; :below for a prefix"),
        }
        self.sort_params = common_sorts(self)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(select(subscription).where(subscription.c.pk.in_(pks))):
            res: dict[str, Any] = {"status": row.status}
            if row.end_instant is not None:
                res["end"] = instant(row.end_instant)
            res["reason"] = row.reason
            res["criteria"] = row.criteria
            if row.error:
                res["error"] = row.error
            channel: dict[str, Any] = {"type": "rest-hook", "endpoint": row.endpoint}
            if row.payload:
                channel["payload"] = row.payload
            names = [name for name, _value in stored_headers(row.headers)]
            if names:
                channel["header"] = [f"{name}: {HIDDEN}" for name in names]
            res["channel"] = channel
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        user = _principal(ctx.conn, ctx.user_name)
        if current is not None:
            _require_owner(user, current, "update")
        owner = current.owner if current is not None else ctx.user_name
        owner_rights = user if owner == ctx.user_name else _principal(ctx.conn, owner)

        try:
            criteria = parse_criteria(resource.get("criteria"))
            _require_readable(owner, owner_rights, criteria)
            probe(ctx.conn, criteria)
        except CriteriaError as exc:
            raise _err(str(exc), "criteria") from None

        channel = resource.get("channel")
        require(isinstance(channel, dict), "channel is required", f"{R}.channel")
        assert isinstance(channel, dict)
        require(channel.get("type") == "rest-hook", "Only rest-hook channels are supported", f"{R}.channel.type")
        try:
            check_endpoint(channel.get("endpoint"))
        except EndpointRefused as exc:
            raise _err(str(exc), "channel.endpoint") from None
        payload = channel.get("payload")
        require(payload in (None, FHIR_JSON), f"channel.payload is absent (an empty notification) or {FHIR_JSON}",
                f"{R}.channel.payload")
        headers, client_secret = read_headers(channel.get("header"), current)

        reason = resource.get("reason")
        require(isinstance(reason, str) and bool(reason.strip()), "reason is required", f"{R}.reason")
        end = _end_instant(resource.get("end"))
        status = resource.get("status")
        require(status in STATUSES, "status is requested, active, error or off", f"{R}.status")
        values: dict[str, Any] = {
            "reason": reason, "criteria": criteria.text, "resource_type": criteria.resource_type,
            "endpoint": channel["endpoint"], "headers": orjson.dumps(headers) if headers else None,
            "payload": payload, "end_instant": end,
            "secret": _secret(client_secret, current),
        }
        if status == "error":
            require(current is not None and current.status == "error",
                    "status error is set by the server after failed deliveries; send active or off",
                    f"{R}.status")
            assert current is not None
            values.update(status="error", error=current.error, failures=current.failures)
        else:
            values.update(status="off" if status == "off" or (end is not None and end <= now_us()) else "active",
                          error=None, failures=0)
        if current is None:
            values.update(id=ctx.new_id, uuid=ctx.new_id if is_uuid(ctx.new_id) else None, owner=owner)
            return ctx.insert(subscription, values)
        ctx.update(subscription, current.pk, values)
        return int(current.pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        _require_owner(_principal(ctx.conn, ctx.user_name), current, "delete")


def _secret(given: str | None, current: Row | None) -> str:
    """The client's secret; else the generated one kept across updates; else (new, or the client's secret removed)
    a new generated one."""
    if given is not None:
        return given
    if current is not None and not any(n.lower() == SECRET_HEADER for n, _v in stored_headers(current.headers)):
        return str(current.secret)
    return secrets.token_urlsafe(32)


def _principal(conn: Connection, username: str | None) -> Principal | None:
    return load_principal(conn, username) if username else None


def _require_owner(user: Principal | None, current: Row, what: str) -> None:
    if user is None or user.is_admin or user.username == current.owner:
        return  # None: a server-side write (no user), e.g. a delivery's status change
    raise FhirError.one(403, "forbidden", f"Only the owner of Subscription/{current.id} ({current.owner}) or an "
                                          f"IMIS Administrator may {what} it")


def _require_readable(owner: str | None, rights: Principal | None, criteria: Criteria) -> None:
    """The owner must be able to run the criteria as a search (type and chained kinds' read rights)."""
    from hifhir.auth.matrix import authorize, describe
    from hifhir.fhir.registry import KINDS, kinds_of_type

    if owner is None:
        return
    kinds = kinds_of_type(criteria.resource_type)
    missing = None
    if rights is None or not any(authorize(rights, k, "search") for k in kinds):
        missing = kinds[0]
    else:
        missing = next((KINDS[n] for n in sorted(criteria.involved_kinds)
                        if not authorize(rights, KINDS[n], "search")), None)
    if missing is not None:
        raise FhirError.one(403, "forbidden", f"The owner ({owner}) lacks right {describe(missing, 'search')} to read "
                            f"{missing.resource_type}: the criteria must be a search the owner may run",
                            expression=f"{R}.criteria")


def _end_instant(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _err("end is a dateTime", "end")
    try:
        moment = parse_date_range(value, f"{R}.end").lo
    except FhirError:
        raise _err(f"end '{value[:40]}' is not a dateTime", "end") from None
    return (moment - _EPOCH) // timedelta(microseconds=1)

