"""The FHIR RESTful interactions, written once for every kind (read, vread, search, create, update, delete,
history, $validate). Each call is one DB transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from hifhir.api.http import FHIR_JSON, HttpResponse, http_date, json_response
from hifhir.auth import scope as location_scope
from hifhir.auth.matrix import authorize, require
from hifhir.auth.users import Principal
from hifhir.config import Settings
from hifhir.fhir.errors import FhirError, invalid, issue, not_found, operation_outcome
from hifhir.fhir.kind import ResourceKind, WriteContext, Written, instant, now_us, without_restricted
from hifhir.fhir.registry import BY_PROFILE, KINDS, TYPES, valid_id
from hifhir.fhir.search import (
    build_searchset,
    decode_cursor,
    encode_cursor,
    execute_search,
    parse_search,
)
from hifhir.fhir.searchparams import since_us
from hifhir.fhir.summary import summary_elements
from hifhir.fhir.validate import validate_resource
from hifhir.store.db import connection, transaction
from hifhir.store.fast import FastStatement
from hifhir.store.tables import resource_version as rv


@dataclass
class Call:
    """What every interaction needs to know about the request it serves."""

    engine: Engine
    reader: Engine  # the same pool in autocommit mode, for single-statement reads
    settings: Settings
    base_url: str
    principal: Principal
    lenient: bool  # the openIMIS-compatible alias accepts known legacy deviations
    content_type: str = FHIR_JSON
    prefer_return: str = "representation"
    strict_handling: bool = False
    if_match: str | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_postgres(self) -> bool:
        return not self.settings.is_sqlite


# --- helpers ------------------------------------------------------------------------------------------


def kinds_for(resource_type: str) -> list[ResourceKind]:
    kinds = TYPES.get(resource_type)
    if not kinds:
        raise FhirError.one(404, "not-supported", f"Resource type '{resource_type[:40]}' is not supported")
    return kinds


def check_id(res_id: str) -> None:
    if not valid_id(res_id):
        raise invalid(f"Invalid resource id '{res_id[:70]}' (1-64 of A-Z a-z 0-9 - .)")


def scope_of(call: Call) -> Principal | None:
    """The principal when its location scope restricts what it sees (auth/scope.py), else None: unscoped users
    (administrators, national staff, system clients) pay nothing for scoping."""
    return call.principal if location_scope.is_scoped(call.principal) else None


def require_in_scope(call: Call, conn: Connection, kind: ResourceKind, pk: int, what: str) -> None:
    """404 for an existing row outside the user's scope: it cannot tell it from a missing one."""
    if scope_of(call) is not None and not location_scope.visible_pks(conn, kind, call.principal, [pk]):
        raise not_found(f"{what} not found")


def require_written_in_scope(call: Call, conn: Connection, kind: ResourceKind, pk: int) -> None:
    if scope_of(call) is not None:
        location_scope.require_written_inside(conn, kind, call.principal, pk)


def readable_kinds(call: Call, kinds: list[ResourceKind], what: str,
                   interaction: str = "read") -> list[ResourceKind]:
    """The kinds of a type the user may read; 403 when there is none (checked before any lookup, so that a
    user without the right cannot tell which ids exist)."""
    allowed = [k for k in kinds if authorize(call.principal, k, interaction)]
    if not allowed:
        require(call.principal, kinds[0].resource_type, interaction, what)
    return allowed


def require_any_right(call: Call, kinds: list[ResourceKind], interactions: tuple[str, ...],
                      what: str) -> None:
    """403 unless the user holds the right of one of `interactions` on one writable kind of the type."""
    writable = [k for k in kinds if k.writable] or kinds
    if not any(authorize(call.principal, k, i) for k in writable for i in interactions):
        require(call.principal, writable[0], interactions[0], what)


def etag(version: int) -> str:
    return f'W/"{version}"'


def parse_resource(body: bytes, resource_type: str) -> dict[str, Any]:
    if not body:
        raise invalid("A resource body is required")
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Malformed JSON: {exc}") from None
    if not isinstance(resource, dict):
        raise invalid("The body must be a JSON object")
    actual = resource.get("resourceType")
    if actual != resource_type:
        raise invalid(
            f"resourceType '{str(actual)[:40]}' does not match the endpoint '{resource_type}'", "resourceType"
        )
    return resource


def select_kind(kinds: list[ResourceKind], resource: dict[str, Any]) -> ResourceKind:
    profiles = (resource.get("meta") or {}).get("profile") if isinstance(resource.get("meta"), dict) else None
    if isinstance(profiles, list):
        for url in profiles:
            kind = BY_PROFILE.get(url if isinstance(url, str) else "")
            if kind is not None:
                if kind.resource_type != resource["resourceType"]:
                    raise invalid(f"Profile {url} is not a {resource['resourceType']} profile",
                                  "meta.profile")
                return kind
    matching = [k for k in kinds if k.accepts(resource)]
    if not matching:
        raise FhirError.one(
            422, "business-rule",
            f"Cannot tell which {resource['resourceType']} profile applies; name it in meta.profile",
        )
    return matching[0]


def validate_or_raise(call: Call, kind: ResourceKind, resource: dict[str, Any]) -> dict[str, Any]:
    resource, issues = validate_resource(resource, kind.profile, lenient=call.lenient)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise FhirError(400, [i.to_fhir() for i in issues])
    call.warnings.extend(i.to_fhir() for i in issues)
    return resource


def written_response(call: Call, written: Written, status: int) -> HttpResponse:
    headers = [
        ("ETag", etag(written.version)),
        ("Last-Modified", http_date(written.last_updated)),
        ("Location", f"{call.base_url}/{written.kind.resource_type}/{written.id}/_history/{written.version}"),
    ]
    if call.warnings:
        headers.append(("Warning", "199 hifhir \"" + "; ".join(
            w["diagnostics"].replace('"', "'") for w in call.warnings)[:900] + "\""))
    audit = [(written.kind.resource_type, written.id, written.version)]
    if call.prefer_return == "minimal":
        return HttpResponse(status, b"", None, headers, audit)
    if call.prefer_return == "OperationOutcome":
        info = [issue("informational", f"{written.operation} {written.kind.resource_type}/{written.id}",
                      severity="information"), *call.warnings]
        return HttpResponse(status, orjson.dumps(operation_outcome(info)), call.content_type, headers, audit)
    body = visible_body(call, written.kind.resource_type, written.body) if written.body else b""
    return HttpResponse(status, body, call.content_type, headers, audit)


def _restricted(resource_type: str) -> dict[str, int]:
    found = _RESTRICTED.get(resource_type)
    if found is None:
        found = _RESTRICTED[resource_type] = {
            element: right for kind in TYPES.get(resource_type, ()) for element, right in
            kind.restricted_elements.items()}
    return found


_RESTRICTED: dict[str, dict[str, int]] = {}


def visible_body(call: Call, resource_type: str, body: bytes) -> bytes:
    """A stored body as this user may see it: the elements the kind restricts to a right the user lacks removed
    (the stored versions keep them; most bodies pass through untouched, without parsing)."""
    restricted = _restricted(resource_type)
    return without_restricted(body, restricted, call.principal.has) if restricted else body


def _if_match_version(header: str) -> str:
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


# --- read / vread -------------------------------------------------------------------------------------


_VERSION_COLUMNS = (rv.c.version, rv.c.operation, rv.c.body, rv.c.last_updated, rv.c.kind)
_LATEST = FastStatement(select(*_VERSION_COLUMNS)
                        .where(rv.c.res_type == bindparam("type"), rv.c.res_id == bindparam("id"))
                        .order_by(rv.c.version.desc()).limit(1))
_VERSION = FastStatement(select(*_VERSION_COLUMNS).where(
    rv.c.res_type == bindparam("type"), rv.c.res_id == bindparam("id"), rv.c.version == bindparam("version")))


def read(call: Call, resource_type: str, res_id: str, version: str | None = None) -> HttpResponse:
    readable_kinds(call, kinds_for(resource_type), f"read {resource_type}")
    check_id(res_id)
    params: dict[str, Any] = {"type": resource_type, "id": res_id}
    if version is not None:
        if not version.isdigit() or len(version) > 9:
            raise not_found(f"Version '{version[:20]}' of {resource_type}/{res_id} not found")
        params["version"] = int(version)
    # One statement on an append-only table: it needs no transaction of its own (saves two round trips on PG).
    with connection(call.reader) as conn:
        rows = (_LATEST if version is None else _VERSION).execute(conn, params)
    row = rows[0] if rows else None
    if row is None:
        what = f"{resource_type}/{res_id}" + (f"/_history/{version}" if version else "")
        raise not_found(f"{what} not found")
    if not authorize(call.principal, KINDS[row.kind], "vread" if version is not None else "read"):
        # The user reads another kind of this type (readable_kinds passed): one it may not read is as unknown as
        # a missing id, so that a 403 never tells which ids exist.
        raise not_found(f"{resource_type}/{res_id} not found")
    if scope_of(call) is not None:  # before the 410: a deleted resource outside the scope is unknown too
        with connection(call.reader) as conn:
            location_scope.require_visible(conn, KINDS[row.kind], call.principal, res_id,
                                           f"{resource_type}/{res_id}" + (f"/_history/{version}" if version else ""))
    headers = [("ETag", etag(row.version)), ("Last-Modified", http_date(row.last_updated))]
    if row.operation == "delete":
        raise FhirError(410, [issue("deleted", f"{resource_type}/{res_id} was deleted")], dict(headers))
    return HttpResponse(200, visible_body(call, resource_type, row.body), call.content_type, headers,
                        [(resource_type, res_id, row.version)])


# --- search -------------------------------------------------------------------------------------------


def search(call: Call, resource_type: str, items: list[tuple[str, str]]) -> HttpResponse:
    kinds = kinds_for(resource_type)
    allowed = readable_kinds(call, kinds, f"search {resource_type}", "search")
    req = parse_search(
        resource_type, kinds, items, strict=call.strict_handling,
        page_default=call.settings.page_size_default, page_max=call.settings.page_size_max,
    )
    req.kinds = allowed  # e.g. a Clerk searching Organization sees the insurer, not health facilities
    req.scope = scope_of(call)
    for kind_name in sorted(req.involved_kinds):
        # Chains and _has reveal facts about other kinds: the user must be able to read them.
        other = KINDS[kind_name]
        require(call.principal, other, "search", f"search {resource_type} through {other.resource_type}")
    sync_point = sync_point_us(call)
    # Autocommit is safe: bodies come from the append-only history by (id, version), so a write committed between
    # the page query and the body query cannot make them disagree.
    with connection(call.reader) as conn:
        result = execute_search(conn, req, can_read=lambda k: authorize(call.principal, k, "include"),
                                include_cap=call.settings.include_max)
    body = build_searchset(call.base_url, req, result, summary_elements(), sync_point=instant(sync_point),
                           visible=lambda rtype, stored: visible_body(call, rtype, stored))
    returned = [(resource_type, hit.res_id, hit.version) for hit in result.hits]
    returned.extend((rtype, hit.res_id, hit.version) for rtype, hit in result.included)
    return HttpResponse(200, body, call.content_type, audit=returned)


def sync_point_us(call: Call) -> int:
    """The instant a client may resume from (`_since`, `_lastUpdated=gt`) after this response: a little in the past,
    so that a write transaction still running now — whose changes carry its start time — is not skipped."""
    return now_us() - call.settings.sync_settle_ms * 1000


# --- create / update / delete -------------------------------------------------------------------------


def conflict_from_integrity(exc: IntegrityError, ctx: WriteContext | None = None) -> FhirError:
    """A uniqueness the write expected (`WriteContext.expect_unique`) names what is used; anything else is a
    generic conflict."""
    found = ctx.conflict_for(exc) if ctx is not None else None
    return found or FhirError.one(409, "conflict",
                                  "The write conflicts with existing data (a code or key is already used)")


@dataclass(slots=True)
class Pending:
    """A write applied inside a transaction, answered once the write context is flushed: `status` and the entity
    written — or, for a conditional create that matched, the existing resource (`existing`, nothing written)."""

    status: int
    kind: ResourceKind | None = None
    pk: int | None = None
    existing: Any = None  # (resource type, id) of the matched resource

    def written(self, flushed: dict[tuple[str, int], Written]) -> Written | None:
        if self.kind is None or self.pk is None:
            return None
        return flushed.get((self.kind.name, self.pk))


@dataclass(slots=True)
class PreparedWrite:
    """A create or update checked before any database work: parsed, its kind chosen, rights checked, validated."""

    resource_type: str
    kinds: list[ResourceKind]
    kind: ResourceKind
    resource: dict[str, Any]
    read_ahead: Any = None


def prepare_write(call: Call, resource_type: str, resource: Any, res_id: str | None, *,
                  conditional: bool = False) -> PreparedWrite:
    kinds = kinds_for(resource_type)
    if not isinstance(resource, dict):
        raise invalid("The body must be a JSON object")
    if resource.get("resourceType") != resource_type:
        raise invalid(f"resourceType '{str(resource.get('resourceType'))[:40]}' does not match '{resource_type}'",
                      "resourceType")
    if res_id is not None:
        check_id(res_id)
        if resource.get("id") != res_id:
            raise invalid(f"The resource id must be present and equal '{res_id}'", f"{resource_type}.id")
    kind = select_kind(kinds, resource)
    _require_writable(kind)
    if (res_id is not None or conditional) and not kind.updatable:
        raise FhirError.one(405, "not-supported", f"{resource_type} is created once (POST) and never changed")
    if res_id is None and not conditional:
        _require_creatable(kind)
        require(call.principal, kind, "create", f"create {resource_type}")
    else:  # an update may turn out to be a create (update-as-create, no conditional match): checked again then
        interactions = ("update", "create") if kind.creatable else ("update",)
        require_any_right(call, [kind], interactions, f"update {resource_type}")
    return PreparedWrite(resource_type, kinds, kind, validate_or_raise(call, kind, resource))


def conditional_matches(call: Call, conn: Connection, resource_type: str, query: str) -> list[tuple[str, str]]:
    """(type, id) of the current resources a conditional interaction's search matches (at most 2 are needed)."""
    from urllib.parse import parse_qsl

    try:
        items = parse_qsl(query.lstrip("?"), keep_blank_values=True, strict_parsing=True, max_num_fields=50)
    except ValueError:
        raise invalid(f"Malformed conditional search '{query[:80]}'") from None
    items = [(k, v) for k, v in items if k not in ("_format", "_pretty")]
    if not items:
        raise invalid("A conditional interaction needs search criteria")
    kinds = kinds_for(resource_type)
    req = parse_search(resource_type, kinds, items, strict=True, page_default=2, page_max=2)
    req.count = 2
    req.kinds = readable_kinds(call, kinds, f"search {resource_type}", "search")
    req.scope = scope_of(call)  # a conditional interaction sees only what the user may see
    result = execute_search(conn, req)
    return [(resource_type, hit.res_id) for hit in result.hits]


def apply_create(call: Call, ctx: WriteContext, prepared: PreparedWrite, if_none_exist: str | None = None,
                 new_id: str | None = None) -> Pending:
    """The create inside the caller's transaction; `If-None-Exist` makes it a no-op when one resource matches."""
    if if_none_exist:
        found = conditional_matches(call, ctx.conn, prepared.resource_type, if_none_exist)
        if len(found) > 1:
            raise FhirError.one(412, "duplicate", f"If-None-Exist '{if_none_exist[:80]}' matches several "
                                f"{prepared.resource_type} resources")
        if found:
            return Pending(200, existing=found[0])
    _require_creatable(prepared.kind)
    ctx.new_id, ctx.id_from_client = new_id or str(uuid.uuid4()), False
    ctx.read_ahead = prepared.read_ahead
    pk = prepared.kind.write(ctx, prepared.resource, None)
    require_written_in_scope(call, ctx.conn, prepared.kind, pk)
    ctx.mark(prepared.kind.name, pk)
    answer_kind, answer_pk, status = prepared.kind.create_answer(ctx, pk)  # RPC-style creates answer otherwise
    return Pending(status, KINDS[answer_kind], answer_pk)


def apply_update(call: Call, ctx: WriteContext, prepared: PreparedWrite, res_id: str,
                 if_match: str | None = None) -> Pending:
    kind, rtype = prepared.kind, prepared.resource_type
    found = _find_current(ctx.conn, prepared.kinds, res_id, call.is_postgres)
    if found is None:
        _require_creatable(kind)
        require(call.principal, kind, "create", f"create {rtype}")
        if if_match is not None:
            raise FhirError.one(412, "conflict", f"{rtype}/{res_id} does not exist (If-Match)")
        ctx.new_id, ctx.id_from_client = res_id, True
        pk = kind.write(ctx, prepared.resource, None)
        require_written_in_scope(call, ctx.conn, kind, pk)
        ctx.mark(kind.name, pk)
        return Pending(201, kind, pk)
    current_kind, row = found
    require_in_scope(call, ctx.conn, current_kind, row.pk, f"{rtype}/{res_id}")
    if current_kind is not kind:
        raise invalid(f"{rtype}/{res_id} is a {current_kind.name}; it cannot become a {kind.name}")
    require(call.principal, kind, "update", f"update {rtype}")
    _check_if_match(kind, row, if_match, f"{rtype}/{res_id}")
    if row.deleted:
        ctx.conn.execute(update(kind.table).where(kind.table.c.pk == row.pk).values(deleted=False))
    pk = kind.write(ctx, prepared.resource, row)
    require_written_in_scope(call, ctx.conn, kind, pk)
    ctx.mark(kind.name, pk)
    return Pending(200, kind, pk)


def apply_conditional_update(call: Call, ctx: WriteContext, prepared: PreparedWrite, query: str) -> Pending:
    """`PUT Type?criteria`: no match → create, one match → update it, several → 412 (FHIR R4 §3.1.0.4.3)."""
    found = conditional_matches(call, ctx.conn, prepared.resource_type, query)
    if len(found) > 1:
        raise FhirError.one(412, "duplicate", f"The conditional update '{query[:80]}' matches several "
                            f"{prepared.resource_type} resources")
    given_id = prepared.resource.get("id")
    if not found:
        if given_id is not None:
            check_id(str(given_id))
            return apply_update(call, ctx, prepared, str(given_id))
        require(call.principal, prepared.kind, "create", f"create {prepared.resource_type}")
        return apply_create(call, ctx, prepared)
    res_id = found[0][1]
    if given_id is not None and given_id != res_id:
        raise FhirError.one(400, "invalid", f"The resource id '{str(given_id)[:64]}' differs from the matched "
                            f"{prepared.resource_type}/{res_id}", expression=f"{prepared.resource_type}.id")
    prepared.resource["id"] = res_id
    return apply_update(call, ctx, prepared, res_id)


def apply_delete(call: Call, ctx: WriteContext, resource_type: str, res_id: str,
                 if_match: str | None = None) -> Pending:
    kinds = kinds_for(resource_type)
    require_any_right(call, kinds, ("delete",), f"delete {resource_type}")
    check_id(res_id)
    found = _find_current(ctx.conn, kinds, res_id, call.is_postgres)
    if found is None:
        raise not_found(f"{resource_type}/{res_id} not found")
    kind, row = found
    if not authorize(call.principal, kind, "delete") and not authorize(call.principal, kind, "read"):
        raise not_found(f"{resource_type}/{res_id} not found")  # a kind it may not even read: as if absent
    require_in_scope(call, ctx.conn, kind, row.pk, f"{resource_type}/{res_id}")
    _require_writable(kind)
    if not kind.deletable:
        raise FhirError.one(405, "not-supported", f"{resource_type} is a record: it cannot be deleted")
    require(call.principal, kind, "delete", f"delete {resource_type}")
    _check_if_match(kind, row, if_match, f"{resource_type}/{res_id}")
    if row.deleted:
        return Pending(204)
    kind.delete(ctx, row)
    ctx.deleted.append((kind, row.pk))
    return Pending(204, kind, row.pk)


def existing_response(call: Call, resource_type: str, res_id: str) -> HttpResponse:
    """The current version of a resource a conditional create matched (200, nothing created)."""
    with connection(call.reader) as conn:
        rows = _LATEST.execute(conn, {"type": resource_type, "id": res_id})
    row = rows[0]
    headers = [("ETag", etag(row.version)), ("Last-Modified", http_date(row.last_updated)),
               ("Location", f"{call.base_url}/{resource_type}/{res_id}/_history/{row.version}")]
    audit = [(resource_type, res_id, row.version)]
    if call.prefer_return == "minimal":
        return HttpResponse(200, b"", None, headers, audit)
    return HttpResponse(200, visible_body(call, resource_type, row.body), call.content_type, headers, audit)


def _run_one(call: Call, apply: Any) -> tuple[Pending, dict[tuple[str, int], Written]]:
    ctx: WriteContext | None = None
    try:
        with transaction(call.engine, write=True) as conn:
            ctx = WriteContext(conn, call.principal.username, lenient=call.lenient)
            pending = apply(ctx)
            flushed = ctx.flush()
    except IntegrityError as exc:
        raise conflict_from_integrity(exc, ctx) from None
    return pending, flushed


def read_ahead(call: Call, prepared: PreparedWrite) -> None:
    """On SQLite, a create's reads run in a read transaction before the writer lock is taken, so the lock is held
    for the writes alone (PostgreSQL has no such lock: there they stay in the write transaction)."""
    if prepared.kind.reads_ahead and not call.is_postgres:
        with transaction(call.engine, write=False) as conn:
            ctx = WriteContext(conn, call.principal.username, lenient=call.lenient)
            prepared.read_ahead = prepared.kind.read_ahead(ctx, prepared.resource)


def create(call: Call, resource_type: str, body: bytes, if_none_exist: str | None = None) -> HttpResponse:
    prepared = prepare_write(call, resource_type, parse_resource(body, resource_type), None)
    if not if_none_exist:  # a conditional create may write nothing: its reads stay in its transaction
        read_ahead(call, prepared)
    pending, flushed = _run_one(call, lambda ctx: apply_create(call, ctx, prepared, if_none_exist))
    if pending.existing is not None:
        return existing_response(call, *pending.existing)
    written = pending.written(flushed)
    assert written is not None
    return written_response(call, written, pending.status)


def _require_writable(kind: ResourceKind) -> None:
    if not kind.writable:
        raise FhirError.one(405, "not-supported", f"{kind.resource_type} ({kind.name}) is read-only: "
                            "it comes from server configuration")


def _require_creatable(kind: ResourceKind) -> None:
    if not kind.creatable:
        raise FhirError.one(405, "not-supported", f"{kind.resource_type} ({kind.name}) is created by the server "
                            "only, never by a client")


def _check_if_match(kind: ResourceKind, row: Any, if_match: str | None, what: str) -> None:
    """412 unless If-Match names the current version — the kind's own (a ClaimResponse versions apart from the
    Claim on the same row)."""
    version = row._mapping[kind.version_column]
    if if_match is not None and _if_match_version(if_match) != str(version):
        raise FhirError.one(412, "conflict", f"Version conflict: {what} is at version {version}")


def _find_current(conn: Connection, kinds: list[ResourceKind], res_id: str,
                  lock: bool) -> tuple[ResourceKind, Any] | None:
    for kind in kinds:
        row = kind.current_row(conn, res_id, for_update=lock)
        if row is not None:
            return kind, row
    return None


def update_resource(call: Call, resource_type: str, res_id: str, body: bytes) -> HttpResponse:
    prepared = prepare_write(call, resource_type, parse_resource(body, resource_type), res_id)
    pending, flushed = _run_one(call, lambda ctx: apply_update(call, ctx, prepared, res_id, call.if_match))
    written = pending.written(flushed)
    assert written is not None
    return written_response(call, written, pending.status)


def conditional_update(call: Call, resource_type: str, query: str, body: bytes) -> HttpResponse:
    prepared = prepare_write(call, resource_type, parse_resource(body, resource_type), None, conditional=True)
    pending, flushed = _run_one(call, lambda ctx: apply_conditional_update(call, ctx, prepared, query))
    written = pending.written(flushed)
    assert written is not None
    return written_response(call, written, pending.status)


def delete(call: Call, resource_type: str, res_id: str) -> HttpResponse:
    pending, flushed = _run_one(call, lambda ctx: apply_delete(call, ctx, resource_type, res_id, call.if_match))
    written = pending.written(flushed)
    headers = [("ETag", etag(written.version))] if written is not None else []
    audit = [(resource_type, res_id, written.version if written is not None else None)]
    if call.prefer_return == "OperationOutcome":
        info = operation_outcome([issue("informational", f"Deleted {resource_type}/{res_id}",
                                        severity="information")])
        return HttpResponse(200, orjson.dumps(info), call.content_type, headers, audit)
    return HttpResponse(204, b"", None, headers, audit)


# --- history ------------------------------------------------------------------------------------------

_METHOD_STATUS = {"create": ("POST", "201"), "put": ("PUT", "201"), "update": ("PUT", "200"),
                  "delete": ("DELETE", "204")}


def history(call: Call, resource_type: str, res_id: str | None, items: list[tuple[str, str]]) -> HttpResponse:
    kinds = kinds_for(resource_type)
    what = f"read the history of {resource_type}"
    allowed = readable_kinds(call, kinds, what, "history")
    count = call.settings.page_size_default
    conds = [rv.c.res_type == resource_type]
    if res_id is not None:
        check_id(res_id)
        with connection(call.engine) as conn:
            kind_name = conn.execute(select(rv.c.kind).where(rv.c.res_type == resource_type,
                                                             rv.c.res_id == res_id).limit(1)).scalar()
        if kind_name is None:
            raise not_found(f"{resource_type}/{res_id} not found")
        if not authorize(call.principal, KINDS[kind_name], "history"):
            raise not_found(f"{resource_type}/{res_id} not found")  # as in read: no existence leak
        if scope_of(call) is not None:
            with connection(call.reader) as conn:
                location_scope.require_visible(conn, KINDS[kind_name], call.principal, res_id,
                                               f"{resource_type}/{res_id}")
        conds.append(rv.c.res_id == res_id)
    else:
        in_scope = location_scope.history_condition(allowed, call.principal, rv.c.kind, rv.c.res_id) \
            if scope_of(call) is not None else None
        if in_scope is not None:  # versions of resources now outside the scope are left out
            conds.append(in_scope)
        elif len(allowed) < len(kinds):
            conds.append(rv.c.kind.in_([k.name for k in allowed]))
    passthrough: list[tuple[str, str]] = []
    for key, value in items:
        if key == "_count":
            if not value.isdigit() or len(value) > 9:
                raise invalid("_count must be a non-negative integer", "_count")
            count = min(int(value), call.settings.page_size_max)
            passthrough.append((key, value))
        elif key == "_since":
            # an unencoded `+hh:mm` offset arrives as a space, which no instant contains
            conds.append(rv.c.last_updated >= since_us(value.replace(" ", "+")))
            passthrough.append((key, value))
        elif key == "_cursor":
            _backward, values = decode_cursor(value)
            if not isinstance(values[0], int):
                raise invalid("Invalid paging cursor", "_cursor")
            conds.append(rv.c.seq < values[0])
        elif key in ("_format", "_pretty"):
            continue
        elif call.strict_handling:
            raise FhirError.one(400, "not-supported", f"Unknown history parameter '{key}'", expression=key)
    sync_point = sync_point_us(call)
    stmt = (
        select(rv.c.seq, rv.c.res_id, rv.c.version, rv.c.operation, rv.c.body, rv.c.last_updated)
        .where(and_(*conds))
        .order_by(rv.c.seq.desc())
        .limit(count + 1)
    )
    with connection(call.reader) as conn:
        rows = conn.execute(stmt).all()
    page = rows[:count]
    path = f"{call.base_url}/{resource_type}" + (f"/{res_id}" if res_id else "") + "/_history"
    from urllib.parse import urlencode

    query = urlencode(passthrough)
    self_url = path + (f"?{query}" if query else "")
    links = [{"relation": "self", "url": self_url}]
    if len(rows) > count and page:
        sep = "&" if query else "?"
        links.append({"relation": "next",
                      "url": f"{self_url}{sep}_cursor={encode_cursor([page[-1].seq, 0], False)}"})
    entries = []
    for row in page:
        method, status = _METHOD_STATUS[row.operation]
        entry: dict[str, Any] = {"fullUrl": f"{call.base_url}/{resource_type}/{row.res_id}"}
        if row.body is not None:
            entry["resource"] = orjson.Fragment(visible_body(call, resource_type, row.body))
        entry["request"] = {"method": method,
                            "url": resource_type if method == "POST" else f"{resource_type}/{row.res_id}"}
        entry["response"] = {"status": status, "etag": etag(row.version),
                             "lastModified": instant(row.last_updated)}
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "meta": {"lastUpdated": instant(sync_point)},
                              "type": "history", "link": links}
    if entries:
        bundle["entry"] = entries
    return HttpResponse(200, orjson.dumps(bundle), call.content_type,
                        audit=[(resource_type, row.res_id, row.version) for row in page])


# --- $validate ----------------------------------------------------------------------------------------


def validate_operation(call: Call, resource_type: str, res_id: str | None, body: bytes) -> HttpResponse:
    """Runs the whole write path (structure, profile, references, business rules) and rolls it back.

    The dry run resolves references and checks uniqueness, so it needs a right to write the type: without
    one, $validate would tell anybody which ids and codes exist."""
    kinds = kinds_for(resource_type)
    require_any_right(call, kinds, ("create", "update"), f"validate {resource_type}")
    if res_id is not None:
        check_id(res_id)
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Malformed JSON: {exc}") from None
    if isinstance(payload, dict) and payload.get("resourceType") == "Parameters":
        found = [p.get("resource") for p in payload.get("parameter") or () if isinstance(p, dict)
                 and p.get("name") == "resource"]
        if not found:
            raise invalid("Parameters must carry a 'resource' parameter")
        payload = found[0]
    try:
        raw = orjson.dumps(payload)
    except TypeError:  # orjson reads 1,024 levels of nesting but writes only 255
        raise invalid("The resource is nested too deeply") from None
    resource = parse_resource(raw, resource_type)
    issues: list[dict[str, Any]] = []
    try:
        if res_id is not None and resource.get("id") != res_id:
            issues.append(issue("invalid", f"The resource id must be present and equal '{res_id}'",
                                expression=f"{resource_type}.id"))
        kind = select_kind(kinds, resource)
        resource, found_issues = validate_resource(resource, kind.profile, lenient=call.lenient)
        issues.extend(i.to_fhir() for i in found_issues)
        if not any(i["severity"] in ("error", "fatal") for i in issues):
            _dry_run_write(call, kinds, kind, resource, res_id)
    except FhirError as exc:
        issues.extend(exc.issues)
    if not any(i["severity"] in ("error", "fatal") for i in issues):
        issues.append(issue("informational", "Validation successful", severity="information"))
    return json_response(200, operation_outcome(issues), call.content_type)


class _Rollback(Exception):
    pass


def _dry_run_write(call: Call, kinds: list[ResourceKind], kind: ResourceKind, resource: dict[str, Any],
                   res_id: str | None) -> None:
    """The write `create` (res_id None) or `update` would do, with the same checks, rolled back."""
    _require_writable(kind)
    try:
        with transaction(call.engine, write=True) as conn:
            ctx = WriteContext(conn, call.principal.username, lenient=call.lenient)
            found = _find_current(conn, kinds, res_id, False) if res_id else None
            row = None
            if found is None:
                _require_creatable(kind)
                require(call.principal, kind, "create", f"create {kind.resource_type}")
            else:
                current_kind, row = found
                if current_kind is not kind:
                    raise invalid(f"{kind.resource_type}/{res_id} is a {current_kind.name}; "
                                  f"it cannot become a {kind.name}")
                require(call.principal, kind, "update", f"update {kind.resource_type}")
            ctx.new_id, ctx.id_from_client = (res_id, True) if res_id else (str(uuid.uuid4()), False)
            if row is not None:
                require_in_scope(call, conn, kind, row.pk, f"{kind.resource_type}/{res_id}")
            pk = kind.write(ctx, resource, row)
            require_written_in_scope(call, conn, kind, pk)
            ctx.mark(kind.name, pk)
            ctx.flush()
            raise _Rollback
    except _Rollback:
        pass
    except IntegrityError as exc:
        raise conflict_from_integrity(exc) from None


# --- Patient photo ----------------------------------------------------------------------------------------


def patient_photo(call: Call, res_id: str) -> HttpResponse:
    """The insuree photo that Patient.photo.url points to (the IG's GET slice carries a URL, not the data)."""
    from hifhir.fhir.profiles.patient import load_photo

    readable_kinds(call, kinds_for("Patient"), "read the photo of a Patient", "$photo")
    check_id(res_id)
    with connection(call.reader) as conn:
        if scope_of(call) is not None:
            location_scope.require_visible(conn, KINDS["patient"], call.principal, res_id, f"Patient/{res_id}")
        photo = load_photo(conn, res_id)
    if photo is None:
        raise not_found(f"Patient/{res_id} has no photo")
    content_type, data = photo
    return HttpResponse(200, data, content_type, [("Cache-Control", "private, max-age=300")],
                        [("Patient", res_id, None)])
