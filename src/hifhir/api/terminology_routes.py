"""HTTP handlers for the definitional resources built on the fly (not kinds, never in the history table):
CodeSystem, ValueSet, StructureDefinition and ImplementationGuide — reads, catalog searches, PUT CodeSystem on the
openIMIS code lists, and the terminology operations `ValueSet/$expand`, `CodeSystem/$lookup`,
`CodeSystem/$validate-code` and `ValueSet/$validate-code` (type and instance level, GET with query parameters or
POST with a Parameters body).

Rights (auth/matrix.py, openIMIS codes, domain §4.3):
* reading any of these resources and running the operations: any user holding a role right (`ANY_ROLE`) — code
  lists, price lists and profiles are configuration, not personal data;
* PUT CodeSystem/diagnosis-ICD10-level1: **131001** (Registers: diagnoses upload — the openIMIS right to replace
  the diagnosis list, held by the Scheme Administrator);
* PUT CodeSystem/<other code list>: **131303** (Utilities: execute scripts — openIMIS changes its other reference
  tables only through database scripts; held by the IMIS, HF and offline administrators). The IMIS Administrator
  passes every check anyway.
Every other CodeSystem, and every ValueSet, StructureDefinition and ImplementationGuide, is read-only (405).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson

from hifhir.api.http import HttpResponse, http_date, json_response
from hifhir.api.rest import Call, check_id, etag, parse_resource
from hifhir.auth.matrix import require
from hifhir.fhir import conformance, terminology
from hifhir.fhir.conformance import CATALOG_PARAMS, IG_DATE_US, CatalogEntry
from hifhir.fhir.errors import FhirError, invalid, issue, not_found
from hifhir.fhir.terminology import CodeSystemView, CodingIn, ValueSetView
from hifhir.fhir.validate import validate_resource
from hifhir.store.codelists import DIAGNOSIS_LIST
from hifhir.store.db import connection, transaction

TYPES = frozenset({"CodeSystem", "ValueSet", "StructureDefinition", "ImplementationGuide"})
OPERATIONS = {"CodeSystem": frozenset({"$lookup", "$validate-code"}),
              "ValueSet": frozenset({"$expand", "$validate-code"})}

# The parameters each operation defines (FHIR R4); others are ignored, or refused under Prefer: handling=strict.
_OP_PARAMS = {
    ("ValueSet", "$expand"): frozenset({
        "url", "valueSet", "valueSetVersion", "context", "contextDirection", "filter", "date", "offset", "count",
        "includeDesignations", "designation", "includeDefinition", "activeOnly", "excludeNested",
        "excludeNotForUI", "excludePostCoordinated", "displayLanguage", "exclude-system", "system-version",
        "check-system-version", "force-system-version"}),
    ("CodeSystem", "$lookup"): frozenset({"code", "system", "version", "coding", "date", "displayLanguage",
                                          "property"}),
    ("CodeSystem", "$validate-code"): frozenset({"url", "system", "codeSystem", "code", "version", "display",
                                                 "coding", "codeableConcept", "date", "abstract",
                                                 "displayLanguage"}),
    ("ValueSet", "$validate-code"): frozenset({"url", "context", "valueSet", "valueSetVersion", "code", "system",
                                               "systemVersion", "display", "coding", "codeableConcept", "date",
                                               "abstract", "displayLanguage"}),
}
_IGNORED = frozenset({"_format", "_pretty"})


def _body_response(call: Call, body: bytes, version_id: str | None, last_updated: int | None,
                   status: int = 200) -> HttpResponse:
    headers = []
    if version_id:
        headers.append(("ETag", etag(version_id)))  # type: ignore[arg-type]
    if last_updated:
        headers.append(("Last-Modified", http_date(last_updated)))
    return HttpResponse(status, body, call.content_type, headers)


# --- read -------------------------------------------------------------------------------------------------------


def read(call: Call, rtype: str, res_id: str) -> HttpResponse:
    require(call.principal, rtype, "read", f"read {rtype}")
    check_id(res_id)
    if rtype in conformance.DEFINITION_TYPES:
        body = conformance.definition_body(rtype, res_id)
        if body is None:
            raise not_found(f"{rtype}/{res_id} not found")
        return _body_response(call, body, conformance.STATIC_VERSION_ID, IG_DATE_US)
    with connection(call.reader) as conn:
        if rtype == "CodeSystem":
            cs = terminology.get_codesystem(conn, res_id)
            if cs is None:
                raise not_found(f"CodeSystem/{res_id} not found")
            return _body_response(call, cs.body(), cs.version_id, cs.last_updated)
        vs = terminology.get_valueset(conn, res_id, legacy=call.lenient)
        if vs is None:
            raise not_found(f"ValueSet/{res_id} not found")
        resource = terminology.valueset_resource(vs)
    meta = resource.get("meta") or {}
    return _body_response(call, orjson.dumps(resource), meta.get("versionId"),
                          IG_DATE_US if meta.get("versionId") else None)


# --- search -----------------------------------------------------------------------------------------------------

_HEAVY = {"CodeSystem": ("concept",), "ValueSet": ("compose", "expansion"),
          "StructureDefinition": ("snapshot", "differential", "mapping"),
          "ImplementationGuide": ("definition", "manifest", "global", "dependsOn")}
_MANDATORY = ("resourceType", "id", "meta")
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def _count(value: str, name: str, limit: int) -> int:
    if not value.isdigit() or len(value) > 9:
        raise invalid(f"{name} must be a non-negative integer", name)
    return min(int(value), limit)


def search(call: Call, rtype: str, items: list[tuple[str, str]]) -> HttpResponse:
    require(call.principal, rtype, "search", f"search {rtype}")
    params = CATALOG_PARAMS[rtype]
    count = call.settings.page_size_default
    offset = 0
    summary: str | None = None
    elements: list[str] | None = None
    criteria: list[tuple[str, str | None, str]] = []
    passthrough: list[tuple[str, str]] = []
    warnings: list[dict[str, Any]] = []
    for key, value in items:
        name, _, modifier = key.partition(":")
        if name == "_count":
            count = _count(value, "_count", call.settings.page_size_max)
        elif name == "_offset":
            offset = _count(value, "_offset", 10**9)
            continue
        elif name == "_summary":
            if value not in ("true", "false", "count", "data", "text"):
                raise invalid("_summary must be true, false, count, data or text", "_summary")
            summary = value
        elif name == "_elements":
            elements = [e.strip() for e in value.split(",") if e.strip()]
        elif name in _IGNORED or name == "_total":
            continue
        elif name in params:
            if value == "":
                continue
            criteria.append((name, modifier or None, value))
        else:
            problem = f"Unknown or unsupported search parameter '{key[:60]}' for {rtype}"
            if call.strict_handling:
                raise FhirError.one(400, "not-supported", problem, expression=key[:60])
            warnings.append(issue("not-supported", problem + " (ignored)", severity="warning",
                                  expression=key[:60]))
            continue
        passthrough.append((key, value))
    predicate = conformance.catalog_filter(rtype, criteria)
    with connection(call.reader) as conn:
        entries = _catalog(conn, rtype, criteria)
        matches = conformance.search(entries, predicate)
        page = [] if summary == "count" else matches[offset:offset + count]
        resources = [_render(conn, call, entry) for entry in page]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                              "link": _links(call, rtype, passthrough, offset, count, len(matches))}
    entry_list: list[dict[str, Any]] = []
    for entry, resource in zip(page, resources, strict=True):
        entry_list.append({"fullUrl": f"{call.base_url}/{rtype}/{entry.id}",
                           "resource": _subset(resource, rtype, summary, elements),
                           "search": {"mode": "match"}})
    if warnings:
        entry_list.append({"resource": {"resourceType": "OperationOutcome", "issue": warnings},
                           "search": {"mode": "outcome"}})
    if entry_list:
        bundle["entry"] = entry_list
    return HttpResponse(200, orjson.dumps(bundle), call.content_type)


def _catalog(conn: Any, rtype: str, criteria: list[tuple[str, str | None, str]]) -> list[CatalogEntry]:
    if rtype == "CodeSystem":
        return terminology.codesystem_entries()
    if rtype != "ValueSet":
        return conformance.definition_entries(rtype)
    entries = terminology.valueset_entries()
    # The per-facility price lists are not enumerated (one per facility): found by exact _id or url only.
    for name, modifier, value in criteria:
        if modifier is not None or name not in ("_id", "url"):
            continue
        for v in conformance.split_values(value):
            vs_id = v.split("|", 1)[0].removeprefix(terminology.VS_BASE)
            found = terminology.valueset_entry(conn, vs_id) if "-pricelist-" in vs_id else None
            if found is not None:
                entries.append(found)
    return entries


def _render(conn: Any, call: Call, entry: CatalogEntry) -> bytes | dict[str, Any]:
    if entry.resource_type == "CodeSystem":
        cs = terminology.get_codesystem(conn, entry.id)
        assert cs is not None
        return cs.body()
    if entry.resource_type == "ValueSet":
        vs = terminology.get_valueset(conn, entry.id, legacy=call.lenient)
        assert vs is not None
        return terminology.valueset_resource(vs)
    body = conformance.definition_body(entry.resource_type, entry.id)
    assert body is not None
    return body


def _subset(resource: bytes | dict[str, Any], rtype: str, summary: str | None, elements: list[str] | None) -> Any:
    if summary != "true" and not elements:
        return orjson.Fragment(resource) if isinstance(resource, bytes) else resource
    full = orjson.loads(resource) if isinstance(resource, bytes) else resource
    if elements:
        out = {k: v for k, v in full.items() if k in elements or k in _MANDATORY}
    else:
        out = {k: v for k, v in full.items() if k not in _HEAVY[rtype]}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    out["meta"] = meta
    return out


def _links(call: Call, rtype: str, passthrough: list[tuple[str, str]], offset: int, count: int,
           total: int) -> list[dict[str, str]]:
    query = urlencode(passthrough)
    self_url = f"{call.base_url}/{rtype}" + (f"?{query}" if query else "")
    sep = "&" if query else "?"
    links = [{"relation": "self", "url": self_url + (f"{sep}_offset={offset}" if offset else "")}]
    if count and offset + count < total:
        links.append({"relation": "next", "url": f"{self_url}{sep}_offset={offset + count}"})
    if count and offset > 0:
        previous = max(offset - count, 0)
        links.append({"relation": "previous", "url": self_url + (f"{sep}_offset={previous}" if previous else "")})
    return links


# --- PUT CodeSystem (code lists) --------------------------------------------------------------------------------


def update(call: Call, rtype: str, res_id: str, body: bytes) -> HttpResponse:
    check_id(res_id)
    if rtype != "CodeSystem" or not terminology.is_editable(res_id):
        raise FhirError(405, [issue("not-supported", f"{rtype}/{res_id} is read-only: only the openIMIS code "
                                    "lists (CodeSystem) can be replaced")], {"Allow": "GET"})
    cs_id = terminology.resolve_id(res_id)
    require(call.principal, "diagnoses" if cs_id == DIAGNOSIS_LIST else "CodeSystem", "update",
            f"change the code list {cs_id}")
    resource = parse_resource(body, "CodeSystem")
    if resource.get("id") not in (res_id, cs_id):
        raise invalid(f"The resource id must be present and equal '{cs_id}'", "CodeSystem.id")
    resource, issues = validate_resource(resource, None, lenient=call.lenient)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise FhirError(400, [i.to_fhir() for i in errors])
    concepts = terminology.concepts_of(resource, cs_id)
    with transaction(call.engine, write=True) as conn:
        if call.if_match is not None:
            current = terminology.list_view(conn, cs_id)
            wanted = call.if_match.strip().removeprefix("W/").strip('"')
            if wanted != current.version_id:
                raise FhirError.one(412, "conflict", f"Version conflict: CodeSystem/{cs_id} is at version "
                                    f"{current.version_id}")
        terminology.replace_list(conn, cs_id, concepts)
    with connection(call.reader) as conn:  # what is committed (the cache never holds an uncommitted list)
        view = terminology.list_view(conn, cs_id)
    return _body_response(call, view.body(), view.version_id, view.last_updated)


# --- operations -------------------------------------------------------------------------------------------------


def operation(call: Call, rtype: str, res_id: str | None, name: str, items: list[tuple[str, str]],
              body: bytes | None) -> HttpResponse:
    require(call.principal, rtype, name, f"run {rtype}/{name}")
    if res_id is not None:
        check_id(res_id)
    params = _parameters(call, rtype, name, items, body)
    with connection(call.reader) as conn:
        if name == "$expand":
            result = _expand(conn, call, res_id, params)
        elif name == "$lookup":
            result = terminology.lookup(*_lookup_target(conn, res_id, params))
        elif rtype == "CodeSystem":
            result = _validate_cs(conn, res_id, params)
        else:
            result = _validate_vs(conn, call, res_id, params)
    return json_response(200, result, call.content_type)


def _parameters(call: Call, rtype: str, name: str, items: list[tuple[str, str]],
                body: bytes | None) -> dict[str, list[Any]]:
    """Query parameters and a Parameters body, merged: name → values (strings from the query, typed from the
    body)."""
    allowed = _OP_PARAMS[(rtype, name)]
    out: dict[str, list[Any]] = {}
    pairs: list[tuple[str, Any]] = [(k, v) for k, v in items if k not in _IGNORED]
    if body:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"Malformed JSON: {exc}") from None
        if not isinstance(payload, dict) or payload.get("resourceType") != "Parameters":
            raise invalid(f"{name} takes a Parameters resource in a POST body", "resourceType")
        for i, p in enumerate(payload.get("parameter") or []):
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise invalid("Every parameter needs a name", f"Parameters.parameter[{i}]")
            values = [v for k, v in p.items() if k.startswith("value") or k == "resource"]
            if len(values) != 1:
                raise invalid(f"Parameter '{p['name'][:40]}' needs exactly one value[x] or resource",
                              f"Parameters.parameter[{i}]")
            pairs.append((p["name"], values[0]))
    for key, value in pairs:
        if key not in allowed:
            if call.strict_handling:
                raise FhirError.one(400, "not-supported", f"{name} has no parameter '{key[:40]}'",
                                    expression=key[:40])
            continue
        out.setdefault(key, []).append(value)
    return out


def _one(params: dict[str, list[Any]], name: str) -> Any:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid(f"Parameter '{name}' is given {len(values)} times; it takes one value", name)
    return values[0]


def _text(params: dict[str, list[Any]], name: str) -> str | None:
    value = _one(params, name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise invalid(f"Parameter '{name}' must be a non-empty string", name)
    return value


def _integer(params: dict[str, list[Any]], name: str) -> int | None:
    value = _one(params, name)
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit() and len(value) <= 9:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    raise invalid(f"Parameter '{name}' must be a non-negative integer", name)


def _resource(params: dict[str, list[Any]], name: str, rtype: str) -> dict[str, Any] | None:
    value = _one(params, name)
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("resourceType") != rtype:
        raise invalid(f"Parameter '{name}' must be a {rtype} resource (POST)", name)
    return value


def _coding(value: Any, name: str) -> CodingIn:
    """A Coding from a POST body, or `system|code` from a query string."""
    if isinstance(value, str):
        system, sep, code = value.rpartition("|")
        if not code:
            raise invalid(f"Parameter '{name}' must be a Coding (or system|code in a query)", name)
        return CodingIn(system if sep and system else None, code, None)
    if not isinstance(value, dict) or not isinstance(value.get("code"), str) or not value["code"]:
        raise invalid(f"Parameter '{name}' must be a Coding with a code", name)
    system = value.get("system")
    display = value.get("display")
    if (system is not None and not isinstance(system, str)) or (display is not None and not isinstance(display, str)):
        raise invalid(f"Parameter '{name}' has a malformed system or display", name)
    return CodingIn(system, value["code"], display)


def _codings(params: dict[str, list[Any]], system_param: str) -> list[CodingIn]:
    """What to validate: code (+ system, display), or coding, or codeableConcept — exactly one of them."""
    code = _text(params, "code")
    coding = _one(params, "coding")
    concept = _one(params, "codeableConcept")
    given = [x for x in (code, coding, concept) if x is not None]
    if len(given) != 1:
        raise invalid("Give exactly one of code, coding or codeableConcept", "code")
    display = _text(params, "display")
    if code is not None:
        return [CodingIn(_text(params, system_param), code, display)]
    if coding is not None:
        return [_coding(coding, "coding")]
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list) or not concept["coding"]:
        raise invalid("Parameter 'codeableConcept' must be a CodeableConcept with at least one coding",
                      "codeableConcept")
    return [_coding(c, "codeableConcept") for c in concept["coding"]]


def _target_valueset(conn: Any, call: Call, res_id: str | None, params: dict[str, list[Any]]) -> ValueSetView:
    if res_id is not None:
        view = terminology.get_valueset(conn, res_id, legacy=call.lenient)
        if view is None:
            raise not_found(f"ValueSet/{res_id} not found")
        return view
    url = _text(params, "url")
    inline = _resource(params, "valueSet", "ValueSet")
    if url is not None:
        view = terminology.valueset_by_url(conn, url, legacy=call.lenient)
        if view is None:
            raise not_found(f"No value set with url {url[:200]} on this server")
        return view
    if inline is not None:
        return terminology.inline_valueset(conn, inline)
    raise invalid("Name the value set: url (or ValueSet/{id}/$...) or a valueSet resource", "url")


def _expand(conn: Any, call: Call, res_id: str | None, params: dict[str, list[Any]]) -> dict[str, Any]:
    view = _target_valueset(conn, call, res_id, params)
    one = _one(params, "filter")
    if one is not None and not isinstance(one, str):
        raise invalid("Parameter 'filter' must be a string", "filter")
    filter_text = one or None
    count = _integer(params, "count")
    offset = _integer(params, "offset") or 0
    return terminology.expand_resource(view, terminology.filter_tokens(filter_text), count, offset,
                                       filter_text=filter_text)


def _codesystem(conn: Any, res_id: str | None, url: str | None, what: str) -> CodeSystemView:
    if res_id is not None:
        view = terminology.get_codesystem(conn, res_id)
        if view is None:
            raise not_found(f"CodeSystem/{res_id} not found")
        return view
    if url is None:
        raise invalid(f"Name the code system ({what}, or CodeSystem/{{id}}/$...)", what)
    view = terminology.codesystem_by_url(conn, url)
    if view is None:
        raise not_found(f"Code system {url[:200]} is not held by this server")
    return view


def _lookup_target(conn: Any, res_id: str | None, params: dict[str, list[Any]]) -> tuple[CodeSystemView, str]:
    code = _text(params, "code")
    coding_value = _one(params, "coding")
    system = _text(params, "system")
    if (code is None) == (coding_value is None):
        raise invalid("Give the code to look up: code (with system) or coding", "code")
    if coding_value is not None:
        coding = _coding(coding_value, "coding")
        code = coding.code
        if coding.system is not None:
            if system is not None and terminology.canonical(system) != terminology.canonical(coding.system):
                raise invalid("system and coding.system differ", "system")
            system = coding.system
    assert code is not None
    return _codesystem(conn, res_id, system, "system"), code


def _validate_cs(conn: Any, res_id: str | None, params: dict[str, list[Any]]) -> dict[str, Any]:
    if _one(params, "codeSystem") is not None:
        raise FhirError.one(400, "not-supported", "Validating against an inline codeSystem is not supported",
                            expression="codeSystem")
    url = _text(params, "url")
    system = _text(params, "system")
    if url is not None and system is not None and terminology.canonical(url) != terminology.canonical(system):
        raise invalid("url and system name different code systems", "system")
    codings = _codings(params, "url" if url is not None else "system")
    target = url or system or next((c.system for c in codings if c.system), None)
    return terminology.validate_in_codesystem(_codesystem(conn, res_id, target, "url"), codings)


def _validate_vs(conn: Any, call: Call, res_id: str | None, params: dict[str, list[Any]]) -> dict[str, Any]:
    view = _target_valueset(conn, call, res_id, params)
    return terminology.validate_in_valueset(view, _codings(params, "system"))
