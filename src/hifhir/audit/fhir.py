"""The audit trail as FHIR R4 AuditEvent resources: read and search for holders of right 131207 (user activity
report, IMIS Administrator); never created, changed or deleted through the API (405).

Search parameters: entity (Type/id), patient (Patient id), entity-type, agent (user name or client id), agent-name
(user name, starts with), address, date (with prefixes), action (C R U D E), subtype (restful interaction, or login),
type (rest | 110114), outcome (0 4 8 12), plus _count, _sort (date | -date, newest first by default) and keyset
paging. A search first writes what this process has queued, so a request just made is visible.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import ColumnElement, String, and_, cast, func, or_, select

from hifhir.api.http import HttpRequest, HttpResponse
from hifhir.audit.events import PERSONAL_TYPES
from hifhir.audit.sink import AuditSink
from hifhir.auth.matrix import require
from hifhir.fhir.errors import FhirError, invalid, not_found
from hifhir.fhir.kind import instant
from hifhir.fhir.registry import valid_id
from hifhir.fhir.search import decode_cursor, encode_cursor
from hifhir.fhir.searchparams import instant_param, split_token
from hifhir.store.db import connection
from hifhir.store.tables import audit_entity as en
from hifhir.store.tables import audit_event as ev

RESTFUL = "http://hl7.org/fhir/restful-interaction"
USER_AGENT_EXT = "https://hifhir.org/fhir/StructureDefinition/audit-user-agent"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
             "display": "RESTful Operation"}
LOGIN_TYPE = {"system": DCM, "code": "110114", "display": "User Authentication"}
LOGIN_SUBTYPE = {"system": DCM, "code": "110122", "display": "Login"}
_HUMAN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                      "code": "humanuser", "display": "human user"}]}
_APPLICATION = {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]}
_SOURCE = {"observer": {"display": "hifhir"},
           "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                     "display": "Application Server"}]}
_SYSTEM_OBJECT = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
                  "display": "System Object"}
_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
_ROLES = {"Patient": ("1", "Patient"), "Location": ("2", "Location"), "AuditEvent": ("3", "Report"),
          "Practitioner": ("6", "User"), "PractitionerRole": ("6", "User"), "Subscription": ("13", "Security Resource"),
          "CodeSystem": ("5", "Master file"), "ValueSet": ("5", "Master file"), "Medication": ("5", "Master file"),
          "ActivityDefinition": ("5", "Master file"), "InsurancePlan": ("5", "Master file"),
          "Organization": ("5", "Master file"), "User": ("11", "Security User Entity"),
          "Role": ("12", "Security User Group")}
_ADMIN_SYSTEMS = {"User": "https://hifhir.org/fhir/NamingSystem/user", "Role": "https://hifhir.org/fhir/NamingSystem/role"}
_DOMAIN_RESOURCE = ("4", "Domain Resource")
_QUERY_ROLE = {"system": _ROLE_SYSTEM, "code": "24", "display": "Query"}
_OUTCOMES = frozenset({"0", "4", "8", "12"})
_ACTIONS = frozenset({"C", "R", "U", "D", "E"})
_DATE = instant_param("date", ev.c.recorded)
_CONTROL = frozenset({"_format", "_pretty", "_total", "_elements", "_summary"})

SEARCH_PARAMS: list[dict[str, str]] = [
    {"name": "action", "type": "token", "documentation": "C R U D E"},
    {"name": "address", "type": "string", "documentation": "The caller's network address (starts with)"},
    {"name": "agent", "type": "reference", "documentation": "The user name or OAuth2 client id of the caller"},
    {"name": "agent-name", "type": "string", "documentation": "The user name of the caller (starts with)"},
    {"name": "date", "type": "date", "documentation": "When the event was recorded (prefixes eq ne lt le gt ge)"},
    {"name": "entity", "type": "reference", "documentation": "A resource read, written or returned (Type/id)"},
    {"name": "entity-type", "type": "token", "documentation": "The type of a resource read, written or returned"},
    {"name": "outcome", "type": "token", "documentation": "0 success, 4 minor (4xx), 8 serious (5xx), 12 major"},
    {"name": "patient", "type": "reference", "documentation": "A Patient read, written or returned"},
    {"name": "subtype", "type": "token", "documentation": "The RESTful interaction (read, search-type, create…) "
                                                          "or 110122 (login)"},
    {"name": "type", "type": "token", "documentation": "rest (a RESTful interaction) or 110114 (authentication)"},
]



def capability_resource() -> dict[str, Any]:
    """AuditEvent's entry in the CapabilityStatement."""
    return {
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "The audit trail: every write, every read or search of personal data, every login. Read "
                         "and search need right 131207 (user activity report); never written through the API.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "searchParam": SEARCH_PARAMS,
    }


_EVENT_COLUMNS = (ev.c.pk, cast(ev.c.pk, String).label("id"), ev.c.recorded, ev.c.action, ev.c.subtype,
                  ev.c.outcome, ev.c.status, ev.c.username, ev.c.client_id, ev.c.source_address, ev.c.user_agent,
                  ev.c.resource_type, ev.c.query, ev.c.description)


# --- routing ------------------------------------------------------------------------------------------------


def route(call: Any, request: HttpRequest, segments: list[str], sink: AuditSink) -> HttpResponse:
    """`segments` follow `AuditEvent` in the path."""
    method, n = request.method, len(segments)
    if n == 0 or (n == 1 and segments[0] == "_search"):
        allowed = "GET" if n == 0 else "POST"
        if method != allowed:
            raise _not_allowed(method, allowed)
        items = request.query
        if n == 1:
            items = items + _form(request)
        return search(call, items, sink)
    if n == 1 and not segments[0].startswith(("$", "_")):
        if method != "GET":
            raise _not_allowed(method, "GET")
        return read(call, segments[0])
    if method != "GET":
        raise _not_allowed(method, "")
    raise FhirError.one(404, "not-supported", "AuditEvent supports read and search only")


def _not_allowed(method: str, allowed: str) -> FhirError:
    return FhirError(405, [{"severity": "error", "code": "not-supported",
                            "diagnostics": f"Method {method[:10]} not allowed: the audit trail is read-only"}],
                     {"Allow": allowed} if allowed else {})


def _form(request: HttpRequest) -> list[tuple[str, str]]:
    if not request.body:
        return []
    try:
        return parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise invalid("Malformed form body") from None


# --- read ---------------------------------------------------------------------------------------------------


def read(call: Any, event_id: str) -> HttpResponse:
    require(call.principal, "AuditEvent", "read", "read AuditEvent")
    if not valid_id(event_id):
        raise invalid(f"Invalid resource id '{event_id[:70]}'")
    with connection(call.reader) as conn:
        # The id is the row's pk (tables.audit_event); any other id names no event.
        pk = int(event_id) if event_id.isdigit() and len(event_id) <= 18 else None
        row = None if pk is None else conn.execute(select(*_EVENT_COLUMNS).where(ev.c.pk == pk)).first()
        if row is None:
            raise not_found(f"AuditEvent/{event_id} not found")
        entities = _entities(conn, [row.pk]).get(row.pk, [])
    body = orjson.dumps(to_fhir(row, entities))
    return HttpResponse(200, body, call.content_type, audit=[("AuditEvent", row.id, None)])


# --- search -------------------------------------------------------------------------------------------------


def search(call: Any, items: list[tuple[str, str]], sink: AuditSink) -> HttpResponse:
    require(call.principal, "AuditEvent", "search", "search AuditEvent")
    conds: list[ColumnElement[bool]] = []
    kept: list[tuple[str, str]] = []
    count = call.settings.page_size_default
    descending = True
    cursor: list[Any] | None = None
    for key, value in items:
        name, _, modifier = key.partition(":")
        if name in _CONTROL:
            continue
        if name == "_count":
            if not value.isdigit() or len(value) > 9:
                raise invalid("_count must be a non-negative integer", "_count")
            count = min(int(value), call.settings.page_size_max)
        elif name == "_sort":
            if value not in ("date", "-date"):
                raise invalid("AuditEvent sorts by date or -date", "_sort")
            descending = value == "-date"
        elif name == "_cursor":
            _backward, cursor = decode_cursor(value)
            if not all(isinstance(v, int) for v in cursor[:2]):
                raise invalid("Invalid paging cursor", "_cursor")
            continue
        elif name in _FILTERS:
            if value == "":
                continue
            clause = _FILTERS[name]([v for v in value.split(",") if v], modifier or None, key)
            conds.append(clause)
        elif call.strict_handling:
            raise FhirError.one(400, "not-supported", f"Unknown AuditEvent search parameter '{key[:40]}'",
                                expression=key[:40])
        else:
            continue
        kept.append((key, value))
    if cursor is not None:
        recorded, pk = cursor[0], cursor[1]
        if descending:
            conds.append(or_(ev.c.recorded < recorded, and_(ev.c.recorded == recorded, ev.c.pk < pk)))
        else:
            conds.append(or_(ev.c.recorded > recorded, and_(ev.c.recorded == recorded, ev.c.pk > pk)))
    order = (ev.c.recorded.desc(), ev.c.pk.desc()) if descending else (ev.c.recorded.asc(), ev.c.pk.asc())
    sink.flush()  # this process's queued events first: the request just made is in the answer
    with connection(call.reader) as conn:
        rows = conn.execute(select(*_EVENT_COLUMNS).where(*conds).order_by(*order).limit(count + 1)).all()
        page = rows[:count]
        entities = _entities(conn, [r.pk for r in page]) if page else {}
    self_url = f"{call.base_url}/AuditEvent" + (f"?{urlencode(kept)}" if kept else "")
    links = [{"relation": "self", "url": self_url}]
    if len(rows) > count and page:
        last = page[-1]
        following = [*kept, ("_count", str(count)), ("_cursor", encode_cursor([last.recorded, last.pk], False))]
        links.append({"relation": "next", "url": f"{call.base_url}/AuditEvent?{urlencode(following)}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if page:
        bundle["entry"] = [{"fullUrl": f"{call.base_url}/AuditEvent/{r.id}",
                            "resource": to_fhir(r, entities.get(r.pk, [])), "search": {"mode": "match"}}
                           for r in page]
    return HttpResponse(200, orjson.dumps(bundle), call.content_type,
                        audit=[("AuditEvent", r.id, None) for r in page])


def _in_entities(*conds: ColumnElement[bool]) -> ColumnElement[bool]:
    return ev.c.pk.in_(select(en.c.event_pk).where(*conds))


def _reference(value: str, expression: str, default_type: str | None = None) -> tuple[str, str]:
    """`Type/id`, a full URL ending in it, or (with a default type) a bare id."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2][:1].isupper():
        rtype, rid = parts[-2], parts[-1]
    elif default_type is not None and len(parts) == 1:
        rtype, rid = default_type, parts[0]
    else:
        raise invalid(f"'{expression}' takes Type/id, not '{value[:60]}'", expression)
    if default_type is not None and rtype != default_type:
        raise invalid(f"'{expression}' takes a {default_type} reference", expression)
    if not (valid_id(rid) or (rtype in _ADMIN_SYSTEMS and 0 < len(rid) <= 64)):
        raise invalid(f"Invalid id in '{expression}': '{rid[:70]}'", expression)
    return rtype, rid


def _entity(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
    _no_modifier(modifier, expression)
    refs = [_reference(v, expression) for v in values]
    return or_(*(_in_entities(en.c.resource_type == t, en.c.resource_id == i) for t, i in refs))


def _patient(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
    _no_modifier(modifier, expression)
    refs = [_reference(v, expression, "Patient") for v in values]
    return or_(*(_in_entities(en.c.resource_type == t, en.c.resource_id == i) for t, i in refs))


def _entity_type(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
    _no_modifier(modifier, expression)
    return _in_entities(en.c.resource_type.in_([split_token(v, expression)[1] for v in values]))


def _agent(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
    if modifier not in (None, "identifier"):
        raise invalid(f"Modifier ':{modifier}' is not supported on 'agent'", expression)
    names = [split_token(v, expression)[1] for v in values]
    return or_(ev.c.username.in_(names), ev.c.client_id.in_(names))


def _starts_with(column: Any) -> Any:
    def clause(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
        if modifier == "exact":
            return column.in_(values)
        if modifier not in (None, "contains"):
            raise invalid(f"Modifier ':{modifier}' is not supported on '{expression}'", expression)
        out = []
        for v in values:
            escaped = v.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%" if modifier == "contains" else f"{escaped}%"
            out.append(func.lower(column).like(pattern, escape="\\"))
        return or_(*out)
    return clause


def _date(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
    _no_modifier(modifier, expression)
    return or_(*(_DATE.clause(v, None, expression) for v in values))


def _token(column: Any, allowed: frozenset[str] | None = None, systems: frozenset[str] = frozenset()) -> Any:
    def clause(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
        _no_modifier(modifier, expression)
        codes = []
        for v in values:
            system, code = split_token(v, expression)
            if system and systems and system not in systems:
                raise invalid(f"Unknown code system '{system[:80]}' for '{expression}'", expression)
            if allowed is not None and code not in allowed:
                raise invalid(f"'{expression}' takes one of {', '.join(sorted(allowed))}", expression)
            codes.append("login" if code == "110122" else code)
        return column.in_(codes)
    return clause


def _type(values: list[str], modifier: str | None, expression: str) -> ColumnElement[bool]:
    _no_modifier(modifier, expression)
    clauses = []
    for v in values:
        code = split_token(v, expression)[1]
        if code == "rest":
            clauses.append(ev.c.subtype != "login")
        elif code == "110114":
            clauses.append(ev.c.subtype == "login")
        else:
            raise invalid(f"'{expression}' takes rest or 110114", expression)
    return or_(*clauses)


def _no_modifier(modifier: str | None, expression: str) -> None:
    if modifier is not None:
        raise invalid(f"Modifier ':{modifier}' is not supported on '{expression.split(':')[0]}'", expression)


_FILTERS = {
    "entity": _entity,
    "patient": _patient,
    "entity-type": _entity_type,
    "agent": _agent,
    "agent-name": _starts_with(ev.c.username),
    "address": _starts_with(ev.c.source_address),
    "date": _date,
    "action": _token(ev.c.action, _ACTIONS),
    "subtype": _token(ev.c.subtype, systems=frozenset({RESTFUL, DCM})),
    "type": _type,
    "outcome": _token(ev.c.outcome, _OUTCOMES),
}


def _entities(conn: Any, pks: list[int]) -> dict[int, list[Any]]:
    rows = conn.execute(select(en.c.event_pk, en.c.resource_type, en.c.resource_id, en.c.version_id)
                        .where(en.c.event_pk.in_(pks)).order_by(en.c.event_pk, en.c.position)).all()
    out: dict[int, list[Any]] = {}
    for row in rows:
        out.setdefault(row.event_pk, []).append(row)
    return out


# --- rendering ----------------------------------------------------------------------------------------------


def to_fhir(row: Any, entities: list[Any]) -> dict[str, Any]:
    """One audit_event row and its audit_entity rows as an R4 AuditEvent."""
    login = row.subtype == "login"
    outcome_desc = f"HTTP {row.status}"
    if row.description:
        outcome_desc += f" ({row.description})"
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": row.id,
        "type": LOGIN_TYPE if login else REST_TYPE,
        "subtype": [LOGIN_SUBTYPE if login else {"system": RESTFUL, "code": row.subtype}],
        "action": row.action,
        "recorded": instant(row.recorded),
        "outcome": row.outcome,
        "outcomeDesc": outcome_desc,
        "agent": [_agent_of(row)],
        "source": _SOURCE,
    }
    rendered = [_entity_of(e) for e in entities]
    if row.query is not None:
        rendered.append({"type": _SYSTEM_OBJECT, "role": _QUERY_ROLE,
                         "description": f"{row.resource_type or 'system'} search",
                         "query": base64.b64encode(row.query.encode()).decode()})
    if rendered:
        resource["entity"] = rendered
    return resource


def _agent_of(row: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {}
    if row.client_id:
        agent["type"] = _APPLICATION
        agent["who"] = {"identifier": {"value": row.client_id}, "display": row.client_id}
        if row.username:
            agent["altId"] = row.username
    elif row.username:
        agent["type"] = _HUMAN
        agent["who"] = {"identifier": {"value": row.username}, "display": row.username}
        agent["name"] = row.username
    agent["requestor"] = True
    if row.source_address:
        agent["network"] = {"address": row.source_address, "type": "2"}
    if row.user_agent:  # R4 has no element for it: hifhir's extension
        agent["extension"] = [{"url": USER_AGENT_EXT, "valueString": row.user_agent}]
    return agent


def _entity_of(row: Any) -> dict[str, Any]:
    code, display = _ROLES.get(row.resource_type, _DOMAIN_RESOURCE)
    if row.resource_type in _ADMIN_SYSTEMS:  # an account or a role of the administration API: not a FHIR resource
        what: dict[str, Any] = {"identifier": {"system": _ADMIN_SYSTEMS[row.resource_type],
                                               "value": row.resource_id},
                                "display": f"{row.resource_type} {row.resource_id}"}
    else:
        reference = f"{row.resource_type}/{row.resource_id}"
        if row.version_id is not None:
            reference += f"/_history/{row.version_id}"
        what = {"reference": reference}
    entity: dict[str, Any] = {"what": what, "type": _SYSTEM_OBJECT,
                              "role": {"system": _ROLE_SYSTEM, "code": code, "display": display}}
    if row.resource_type in PERSONAL_TYPES and row.resource_type != "AuditEvent":
        entity["securityLabel"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                    "code": "R", "display": "restricted"}]
    return entity
