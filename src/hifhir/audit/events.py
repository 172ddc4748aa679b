"""What a request is, for the audit trail: its action (C R U D E), its RESTful interaction, its outcome, the
resources it touched — and whether it is audited at all.

Audited: every write (create, update, delete, batch, transaction), every read, search, history or operation
that concerns personal data (the type asked for, or any resource answered, is in PERSONAL_TYPES) — refused
attempts included — and every authentication. Master data (Medication, ActivityDefinition, Location,
InsurancePlan, Organization, terminology) is audited when written, not when read.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

Entity = tuple[str, str, int | None]  # (resource type, id, version) of a resource read, written or returned

# Types holding data about people (insurees, their families, policies, claims, payments, staff, subscriptions
# with their endpoints) — and the audit trail itself.
PERSONAL_TYPES = frozenset({
    "Patient", "Group", "Contract", "Coverage", "CoverageEligibilityRequest", "CoverageEligibilityResponse",
    "Claim", "ClaimResponse", "Communication", "CommunicationRequest", "Invoice", "PaymentNotice",
    "PaymentReconciliation", "Practitioner", "PractitionerRole", "Subscription", "AuditEvent",
    "User", "Role",  # the administration API's accounts and roles (who may see all of the above)
})

FHIR_BASES = ("/fhir", "/api/api_fhir_r4")
ADMIN_BASE = "/api/admin/"
ADMIN_TYPES = {"users": "User", "roles": "Role"}  # what the administration API's paths name, as entity types
_ADMIN_NAME_FIELD = {"User": "username", "Role": "name"}
_WRITES = frozenset({"create", "update", "patch", "delete", "batch", "transaction"})
_BUNDLE_TYPE = re.compile(rb'"type"\s*:\s*"(transaction|batch)"')
QUERY_MAX = 4000  # a search's query kept in the trail (longer ones are cut)

# action per restful interaction (http://hl7.org/fhir/audit-event-action)
ACTIONS = {
    "read": "R", "vread": "R", "search-type": "R", "search-system": "R", "history-instance": "R",
    "history-type": "R", "history-system": "R", "create": "C", "update": "U", "patch": "U", "delete": "D",
    "batch": "E", "transaction": "E", "operation": "E", "login": "E",
}


@dataclass(slots=True)
class AuditRecord:
    """One audit event as the request path hands it to the sink (ids and clipping are the writer's work)."""

    recorded: int  # epoch microseconds
    action: str
    subtype: str
    outcome: str
    status: int
    username: str | None
    client_id: str | None
    address: str | None
    user_agent: str | None
    resource_type: str | None
    query: str | None
    description: str | None
    entities: list[Entity] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Interaction:
    subtype: str
    resource_type: str | None
    res_id: str | None = None
    version: int | None = None


def outcome_of(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (the client's: 4xx), 8 serious failure (the server could
    not serve: 5xx), 12 major failure (the request broke off on an unexpected error: 500)."""
    if status < 400:
        return "0"
    if status < 500:
        return "4"
    return "12" if status == 500 else "8"


def classify(method: str, path: str) -> Interaction | None:
    """The RESTful interaction a FHIR request asks for, from its method and path; None outside the FHIR API
    (login, metadata, health checks), which the trail does not record as interactions."""
    for base in FHIR_BASES:
        if path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/"):
            segments = [s for s in path[len(base):].split("/") if s]
            break
    else:
        return _administration(method, path) if path.startswith(ADMIN_BASE) else None
    n = len(segments)
    if n == 0:
        if method == "POST":
            return Interaction("batch", None)  # or transaction: told apart by bundle_subtype
        return Interaction("search-system", None)
    rtype = segments[0]
    if rtype == "_history":
        return Interaction("history-system", None)
    if not rtype[:1].isupper():  # metadata, login, oauth/token, .well-known: not resource interactions
        return None
    if n == 1:
        if method == "POST":
            return Interaction("create", rtype)
        if method == "PUT" or method == "PATCH":
            return Interaction("update", rtype)  # conditional
        if method == "DELETE":
            return Interaction("delete", rtype)
        return Interaction("search-type", rtype)
    second = segments[1]
    if n == 2 and second == "_search":
        return Interaction("search-type", rtype)
    if n == 2 and second == "_history":
        return Interaction("history-type", rtype)
    if second.startswith("$"):
        return Interaction("operation", rtype)
    if n == 2:
        subtype = {"PUT": "update", "PATCH": "patch", "DELETE": "delete", "POST": "create"}.get(method, "read")
        return Interaction(subtype, rtype, second)
    third = segments[2]
    if third.startswith("$"):
        return Interaction("operation", rtype, second)
    if third == "_history":
        if n == 3:
            return Interaction("history-instance", rtype, second)
        version = segments[3]
        return Interaction("vread", rtype, second, int(version) if version.isdigit() and len(version) < 10 else None)
    return Interaction("read", rtype, second)


def _administration(method: str, path: str) -> Interaction | None:
    """The users and roles API (api/admin_routes.py): staff data and who may do what — audited like FHIR."""
    segments = [s for s in path[len(ADMIN_BASE):].split("/") if s]
    rtype = ADMIN_TYPES.get(segments[0]) if segments else None
    if rtype is None:
        return None
    if len(segments) == 1:
        return Interaction({"POST": "create"}.get(method, "search-type"), rtype)
    if len(segments) > 2:
        return Interaction("operation", rtype, segments[1])  # revoke-tokens
    return Interaction({"PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method, "read"), rtype,
                       segments[1])


def _created_name(body: bytes, field_name: str) -> str | None:
    """The name of the account or role an administration POST creates (rare requests: the body is parsed again)."""
    try:
        value = orjson.loads(body).get(field_name) if body else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def bundle_subtype(request_body: bytes, response_body: bytes) -> str:
    """batch or transaction: the answered Bundle says which (bundle.py writes its type second); a refused Bundle
    is told by its own type."""
    head = response_body[:64]
    if b'"transaction-response"' in head:
        return "transaction"
    if b'"batch-response"' in head:
        return "batch"
    found = _BUNDLE_TYPE.search(request_body)
    return found.group(1).decode() if found else "batch"


def action_of(method: str, subtype: str) -> str:
    if subtype == "operation":
        return "R" if method == "GET" else "E"  # GET operations have no side effects (FHIR R4 operations.html)
    return ACTIONS.get(subtype, "E")


def record_for(request: Any, response: Any, address: str | None = None) -> AuditRecord | None:
    """The audit record of a FHIR request and its answer, or None when it is not audited.

    `request` is an api.http.HttpRequest carrying `principal` (None when authentication failed); `response` an
    api.http.HttpResponse whose `audit` lists what the interaction touched — None when it reported nothing
    (refused, failed): the resource the path names stands in for it then."""
    method = request.method
    interaction = classify(method, request.path)
    if interaction is None:
        return None
    subtype, rtype = interaction.subtype, interaction.resource_type
    entities = response.audit
    if entities is None:
        res_id = interaction.res_id
        if res_id is None and subtype == "create" and rtype in _ADMIN_NAME_FIELD:
            res_id = _created_name(request.body, _ADMIN_NAME_FIELD[rtype])
        entities = [(rtype, res_id, interaction.version)] if rtype and res_id else []
    if not (subtype in _WRITES or rtype in PERSONAL_TYPES or any(e[0] in PERSONAL_TYPES for e in entities)):
        return None
    if subtype == "batch":
        subtype = bundle_subtype(request.body, response.body)
    query = None
    if subtype.startswith("search"):
        query = request.raw_query
        if method == "POST" and request.body:
            form = request.body.decode("utf-8", "replace")
            query = f"{query}&{form}" if query else form
        query = query[:QUERY_MAX]
    principal = request.principal
    status = response.status
    return AuditRecord(
        recorded=time.time_ns() // 1000,
        action=action_of(method, subtype),
        subtype=subtype,
        outcome=outcome_of(status),
        status=status,
        username=principal.username if principal is not None else None,
        client_id=principal.client_id if principal is not None else None,
        address=address,
        user_agent=request.headers.get("user-agent"),
        resource_type=rtype,
        query=query,
        description=f"{method} {request.path}",
        entities=entities,
    )


def authentication_record(status: int, username: str | None, client_id: str | None, address: str | None,
                          user_agent: str | None, description: str) -> AuditRecord:
    """A login (user name and password) or an OAuth2 client authentication, successful or not."""
    return AuditRecord(
        recorded=time.time_ns() // 1000, action="E", subtype="login", outcome=outcome_of(status), status=status,
        username=username, client_id=client_id, address=address, user_agent=user_agent, resource_type=None,
        query=None, description=description)
