"""Batch and transaction Bundles (`POST [base]/`, FHIR R4 http.html#transaction).

A **transaction** is one database transaction: every entry succeeds or nothing is written. Entries are processed
in the order FHIR prescribes (DELETE, POST, PUT, GET); `urn:uuid:` full URLs of POSTed entries get their ids
before any write, every reference to them is rewritten, and the creates run in dependency order (a Group after
the Patients it lists, whatever the order in the Bundle), so a point of service enrols a family — members, Group,
Contract — in one request. A failing entry fails the whole Bundle with its OperationOutcome, the issue's
expression naming the entry.

A **batch** runs each entry on its own, exactly as the single interaction would, and answers every entry with
its own status (a failure is that entry's OperationOutcome). Entries of a batch cannot reference each other.

Conditional interactions (`ifNoneExist` on POST, `PUT Type?criteria`) make retries idempotent in both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import DataError, IntegrityError

from hifhir.api import rest
from hifhir.api.http import HttpResponse
from hifhir.auth.matrix import require
from hifhir.fhir.elements import identifier_value
from hifhir.fhir.errors import FhirError, invalid, operation_outcome
from hifhir.fhir.kind import WriteContext, Written, instant
from hifhir.store.db import transaction

MAX_ENTRIES = 1000
_METHODS = ("DELETE", "POST", "PUT", "GET")  # the processing order of a transaction
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    index: int
    method: str
    resource_type: str
    res_id: str | None
    query: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    new_id: str | None = None  # POST: the id the created resource will get (or the matched resource's)
    pending: rest.Pending | None = None
    response: dict[str, Any] = field(default_factory=dict)
    audit: list[tuple[str, str, int | None]] = field(default_factory=list)  # what the entry read or wrote

    @property
    def expression(self) -> str:
        return f"Bundle.entry[{self.index}]"


def process(call: rest.Call, body: bytes) -> HttpResponse:
    bundle = _parse(body)
    kind = bundle["type"]
    require(call.principal, "Bundle", kind, f"process a {kind} Bundle")  # PER_ENTRY: each entry is checked
    entries = [_entry(call, i, raw) for i, raw in enumerate(bundle.get("entry") or [])]
    if kind == "transaction":
        responses = _transaction(call, entries)
        answer_type = "transaction-response"
    else:
        responses = [_batch_entry(call, e) for e in entries]
        answer_type = "batch-response"
    out = {"resourceType": "Bundle", "type": answer_type, "entry": responses} if responses else {
        "resourceType": "Bundle", "type": answer_type}
    return HttpResponse(200, orjson.dumps(out), call.content_type, audit=[a for e in entries for a in e.audit])


# --- parsing ------------------------------------------------------------------------------------------------


def _parse(body: bytes) -> dict[str, Any]:
    try:
        bundle = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Malformed JSON: {exc}") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise invalid("POST to the base takes a Bundle of type transaction or batch", "resourceType")
    if bundle.get("type") not in ("transaction", "batch"):
        raise invalid(f"Bundle.type must be transaction or batch, not '{str(bundle.get('type'))[:30]}'",
                      "Bundle.type")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise invalid("Bundle.entry must be an array", "Bundle.entry")
    if len(entries) > MAX_ENTRIES:
        raise FhirError.one(413, "too-costly", f"At most {MAX_ENTRIES} entries per Bundle", expression="Bundle.entry")
    return bundle


def _entry(call: rest.Call, index: int, raw: Any) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise invalid("Every entry needs a request (method and url)", f"{where}.request")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    if method not in (*_METHODS, "PATCH", "HEAD"):
        raise invalid(f"Unknown request method '{str(method)[:10]}'", f"{where}.request.method")
    if method in ("PATCH", "HEAD"):
        raise FhirError.one(405, "not-supported", f"{method} is not supported in Bundles",
                            expression=f"{where}.request.method")
    if not isinstance(url, str) or not url:
        raise invalid("request.url is required", f"{where}.request.url")
    if url.startswith(call.base_url + "/"):
        url = url[len(call.base_url) + 1:]
    path, _, query = url.lstrip("/").partition("?")
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise invalid(f"request.url '{url[:80]}' must be Type, Type/id or Type?criteria", f"{where}.request.url")
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise invalid(f"A {method} entry needs a resource", f"{where}.resource")
        if resource.get("resourceType") != segments[0]:
            raise invalid(f"The resource's type does not match request.url '{url[:80]}'", f"{where}.resource")
    elif resource is not None:
        raise invalid(f"A {method} entry takes no resource", f"{where}.resource")
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    return Entry(index, method, segments[0], segments[1] if len(segments) > 1 else None, query or None,
                 resource, full_url, _str(request.get("ifNoneExist")), _str(request.get("ifMatch")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- transaction --------------------------------------------------------------------------------------------


def _transaction(call: rest.Call, entries: list[Entry]) -> list[dict[str, Any]]:
    by_method = {m: [e for e in entries if e.method == m] for m in _METHODS}
    for entry in entries:
        if entry.method == "POST" and entry.res_id is not None:
            raise _at(entry, invalid("POST takes request.url Type"))
        if entry.method in ("DELETE",) and entry.res_id is None:
            raise _at(entry, invalid("DELETE takes request.url Type/id"))
        if entry.method == "PUT" and entry.res_id is None and not entry.query:
            raise _at(entry, invalid("PUT takes request.url Type/id or Type?criteria"))
    ctx: WriteContext | None = None
    try:
        with transaction(call.engine, write=True) as conn:
            ctx = WriteContext(conn, call.principal.username, lenient=call.lenient)
            for entry in by_method["DELETE"]:
                entry.pending = _guarded(entry, lambda e=entry: rest.apply_delete(
                    call, ctx, e.resource_type, str(e.res_id), e.if_match))
            references = _assign_ids(call, ctx, by_method["POST"])
            for entry in by_method["POST"] + by_method["PUT"]:
                assert entry.resource is not None
                entry.resource = _rewrite(entry.resource, references)
            for entry in _dependency_order(by_method["POST"], references):
                if entry.pending is None:  # not matched by ifNoneExist
                    prepared = _guarded(entry, lambda e=entry: rest.prepare_write(call, e.resource_type,
                                                                                   e.resource, None))
                    entry.pending = _guarded(entry, lambda e=entry, p=prepared: rest.apply_create(
                        call, ctx, p, None, e.new_id))
            for entry in by_method["PUT"]:
                entry.pending = _guarded(entry, lambda e=entry: _put(call, ctx, e))
            flushed = ctx.flush()
    except IntegrityError as exc:
        raise rest.conflict_from_integrity(exc, ctx) from None
    for entry in entries:
        if entry.method == "GET":
            entry.response = _batch_entry(call, entry)
        else:
            entry.response = _written_entry(call, entry, flushed)
    return [e.response for e in entries]


def _put(call: rest.Call, ctx: WriteContext, entry: Entry) -> rest.Pending:
    assert entry.resource is not None
    if entry.res_id is None:
        prepared = rest.prepare_write(call, entry.resource_type, entry.resource, None, conditional=True)
        return rest.apply_conditional_update(call, ctx, prepared, str(entry.query))
    prepared = rest.prepare_write(call, entry.resource_type, entry.resource, entry.res_id)
    return rest.apply_update(call, ctx, prepared, entry.res_id, entry.if_match)


def _assign_ids(call: rest.Call, ctx: WriteContext, posts: list[Entry]) -> dict[str, str]:
    """The id each POSTed entry will have — the existing resource's when ifNoneExist matches — and the map from
    full URLs (`urn:uuid:…`) to the references that replace them."""
    references: dict[str, str] = {}
    for entry in posts:
        assert entry.resource is not None
        if entry.if_none_exist:
            found = _guarded(entry, lambda e=entry: rest.conditional_matches(
                call, ctx.conn, e.resource_type, str(e.if_none_exist)))
            if len(found) > 1:
                raise _at(entry, FhirError.one(412, "duplicate", f"ifNoneExist '{entry.if_none_exist[:80]}' "
                                               f"matches several {entry.resource_type} resources"))
            if found:
                entry.new_id = found[0][1]
                entry.pending = rest.Pending(200, existing=found[0])
        if entry.new_id is None:
            client_uuid = identifier_value(entry.resource, "UUID")
            entry.new_id = client_uuid if isinstance(client_uuid, str) else str(uuid.uuid4())
        if entry.full_url:
            if entry.full_url in references:
                raise _at(entry, invalid(f"fullUrl {entry.full_url[:80]} appears twice", "fullUrl"))
            references[entry.full_url] = f"{entry.resource_type}/{entry.new_id}"
    return references


def _rewrite(value: Any, references: dict[str, str]) -> Any:
    """Replace every `reference` naming a full URL of this Bundle with `Type/id`."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in references:
                out[key] = references[item]
            else:
                out[key] = _rewrite(item, references)
        return out
    if isinstance(value, list):
        return [_rewrite(v, references) for v in value]
    return value


def _dependency_order(posts: list[Entry], references: dict[str, str]) -> list[Entry]:
    """Creates ordered so that an entry comes after the entries it references (stable otherwise); a cycle keeps
    the Bundle order for the entries in it and lets reference resolution report what is missing."""
    by_reference = {f"{e.resource_type}/{e.new_id}": e for e in posts}
    needs: dict[int, set[int]] = {}
    for entry in posts:
        targets = _references_in(entry.resource)
        needs[entry.index] = {by_reference[t].index for t in targets if t in by_reference} - {entry.index}
    ordered: list[Entry] = []
    done: set[int] = set()
    remaining = list(posts)
    while remaining:
        ready = [e for e in remaining if needs[e.index] <= done] or remaining[:1]
        for entry in ready:
            ordered.append(entry)
            done.add(entry.index)
        remaining = [e for e in remaining if e.index not in done]
    return ordered


def _references_in(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.add(item)
            else:
                found |= _references_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references_in(item)
    return found


def _guarded(entry: Entry, action: Any) -> Any:
    try:
        return action()
    except FhirError as exc:
        raise _at(entry, exc) from None


def _at(entry: Entry, exc: FhirError) -> FhirError:
    """The entry's error, located: diagnostics say which entry, expressions are prefixed with it."""
    issues = []
    for item in exc.issues:
        located = dict(item)
        located["diagnostics"] = f"{entry.expression} ({entry.method} {entry.resource_type}): " + str(
            item.get("diagnostics", ""))
        located["expression"] = [f"{entry.expression}.resource." + e.split(".", 1)[-1] if "." in e else
                                 f"{entry.expression}" for e in item.get("expression", [])] or [entry.expression]
        issues.append(located)
    return FhirError(exc.status, issues, exc.headers)


def _written_entry(call: rest.Call, entry: Entry, flushed: dict[tuple[str, int], Written]) -> dict[str, Any]:
    pending = entry.pending
    assert pending is not None
    if pending.existing is not None:
        resp = rest.existing_response(call, *pending.existing)
        entry.audit = resp.audit or []
        return _from_http(resp, f"{pending.existing[0]}/{pending.existing[1]}")
    written = pending.written(flushed)
    if written is None:  # a delete of something already deleted
        entry.audit = [(entry.resource_type, str(entry.res_id), None)]
        return {"response": {"status": _STATUS_TEXT[pending.status]}}
    entry.audit = [(written.kind.resource_type, written.id, written.version)]
    out: dict[str, Any] = {"fullUrl": f"{call.base_url}/{written.kind.resource_type}/{written.id}"}
    if written.body is not None and call.prefer_return != "minimal":
        out["resource"] = orjson.Fragment(rest.visible_body(call, written.kind.resource_type, written.body))
    response: dict[str, Any] = {"status": _STATUS_TEXT[pending.status], "etag": rest.etag(written.version),
                                "lastModified": instant(written.last_updated)}
    if written.body is not None:
        response["location"] = f"{written.kind.resource_type}/{written.id}/_history/{written.version}"
    out["response"] = response
    return out


# --- batch --------------------------------------------------------------------------------------------------


def _batch_entry(call: rest.Call, entry: Entry) -> dict[str, Any]:
    """One entry as the single interaction would answer it; a failure is this entry's outcome only."""
    sub = rest.Call(engine=call.engine, reader=call.reader, settings=call.settings, base_url=call.base_url,
                    principal=call.principal, lenient=call.lenient, content_type=call.content_type,
                    prefer_return=call.prefer_return, strict_handling=call.strict_handling, if_match=entry.if_match)
    if entry.res_id is not None:  # an attempt on a named resource is audited even when refused
        entry.audit = [(entry.resource_type, entry.res_id, None)]
    try:
        resp = _single(sub, entry)
    except FhirError as exc:
        return {"response": {"status": str(exc.status), "outcome": operation_outcome(exc.issues)}}
    except IntegrityError as exc:
        error = rest.conflict_from_integrity(exc)
        return {"response": {"status": str(error.status), "outcome": operation_outcome(error.issues)}}
    except DataError:  # this entry's value does not fit its column: the other entries still run
        error = invalid("A value is out of range or too long for its field")
        return {"response": {"status": str(error.status), "outcome": operation_outcome(error.issues)}}
    entry.audit = resp.audit or entry.audit
    location = f"{entry.resource_type}/{entry.res_id}" if entry.res_id else None
    return _from_http(resp, location)


def _single(call: rest.Call, entry: Entry) -> HttpResponse:
    try:
        body = orjson.dumps(entry.resource) if entry.resource is not None else b""
    except TypeError:  # orjson reads 1,024 levels of nesting but writes only 255
        raise invalid("The resource is nested too deeply") from None
    if entry.method == "GET":
        if entry.res_id is None:
            items = parse_qsl(entry.query or "", keep_blank_values=True, max_num_fields=200)
            return rest.search(call, entry.resource_type, items)
        return rest.read(call, entry.resource_type, entry.res_id)
    if entry.method == "POST":
        if entry.res_id is not None:
            raise invalid("POST takes request.url Type", f"{entry.expression}.request.url")
        return rest.create(call, entry.resource_type, body, entry.if_none_exist)
    if entry.method == "PUT":
        if entry.res_id is None:
            if not entry.query:
                raise invalid("PUT takes request.url Type/id or Type?criteria", f"{entry.expression}.request.url")
            return rest.conditional_update(call, entry.resource_type, entry.query, body)
        return rest.update_resource(call, entry.resource_type, entry.res_id, body)
    if entry.res_id is None:
        raise invalid("DELETE takes request.url Type/id", f"{entry.expression}.request.url")
    return rest.delete(call, entry.resource_type, entry.res_id)


def _from_http(resp: HttpResponse, fallback_location: str | None) -> dict[str, Any]:
    headers = dict(resp.headers or [])
    out: dict[str, Any] = {}
    if resp.body and resp.content_type:
        out["resource"] = orjson.Fragment(resp.body)
    response: dict[str, Any] = {"status": _STATUS_TEXT.get(resp.status, str(resp.status))}
    location = headers.get("Location")
    if location:
        response["location"] = location.split("/fhir/", 1)[-1].split("/api/api_fhir_r4/", 1)[-1]
    elif fallback_location and resp.status in (200, 201):
        response["location"] = fallback_location
    if "ETag" in headers:
        response["etag"] = headers["ETag"]
    if "resource" in out:  # lastModified is an instant: the resource's own meta.lastUpdated
        meta = orjson.loads(resp.body).get("meta") or {}
        if isinstance(meta.get("lastUpdated"), str) and meta.get("versionId"):
            response["lastModified"] = meta["lastUpdated"]
    out["response"] = response
    return out
