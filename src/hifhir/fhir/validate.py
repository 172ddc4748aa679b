"""Fast validation of incoming FHIR R4 JSON resources.

Two layers:

1. **Base R4 structure** (:mod:`hifhir.fhir.validation.schema`): the official R4 JSON
   schema through ``jsonschema_rs`` - unknown elements, JSON types, primitive formats,
   enumerated codes, arrays vs objects, ext-1 - on the resource and on every nested
   resource (contained, Bundle entries, Parameters).
2. **Structure definitions** (:mod:`hifhir.fhir.validation.profile`): the IG profile's
   snapshot compiled into a check plan (cardinalities, fixed/pattern values, slicing,
   choice types, required bindings, invariants, extension definitions). Without a
   profile, the base R4 resource definition is used the same way, so base cardinalities
   (``Claim.status`` 1..1...), choice exclusivity and required core bindings still apply.

Usage::

    resource, issues = validate_resource(body, PROFILE_BASE + "openimis-patient")
    if any(i.is_error for i in issues): ...

Lenient mode (openIMIS-compatible API alias) first runs :func:`normalise_legacy`, which
turns string booleans into booleans and reports them, and dateTimes without a time zone,
as warnings.
"""

from __future__ import annotations

from typing import Any

from hifhir.fhir.validation.issues import ERROR_SEVERITIES, Issue
from hifhir.fhir.validation.legacy import normalise_legacy
from hifhir.fhir.validation.profile import get_registry
from hifhir.fhir.validation.schema import get_schema_layer, nested_resources
from hifhir.fhir.validation.terminology import ValueSetIndex, get_index, valueset_codes

PROFILE_BASE = "https://openimis.github.io/openimis_fhir_r4_ig/StructureDefinition/"

__all__ = [
    "PROFILE_BASE",
    "Issue",
    "ValueSetIndex",
    "get_index",
    "has_errors",
    "normalise_legacy",
    "profiles_for_type",
    "validate_resource",
    "valueset_codes",
    "warm_up",
]


def profiles_for_type(resource_type: str) -> list[str]:
    """Canonical URLs of the IG profiles constraining ``resource_type`` (sorted)."""
    return get_registry().profiles_for_type(resource_type)


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ERROR_SEVERITIES for i in issues)


def validate_resource(
    resource: dict[str, Any], profile_url: str | None, *, lenient: bool = False
) -> tuple[dict[str, Any], list[Issue]]:
    """Validate ``resource``; returns ``(possibly normalised resource, issues)``.

    ``profile_url`` None -> base R4 only (JSON schema + base resource definition).
    An unknown profile URL is reported as an error (``not-supported``): silently skipping
    it would accept resources the client believes were checked against the profile.
    """
    try:
        return _validate(resource, profile_url, lenient)
    except RecursionError:
        # orjson accepts 1024 nesting levels, more than Python's recursive walks allow
        return resource, [Issue("error", "structure", "Resource", "Resource is too deeply nested")]


def _validate(
    resource: dict[str, Any], profile_url: str | None, lenient: bool
) -> tuple[dict[str, Any], list[Issue]]:
    issues: list[Issue] = []
    if lenient and isinstance(resource, dict):
        resource, warnings = normalise_legacy(resource)
        issues.extend(warnings)

    layer1 = get_schema_layer().validate(resource, lenient=lenient)
    issues.extend(layer1)
    if not isinstance(resource, dict):
        return resource, issues
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in get_schema_layer().resource_types:
        return resource, issues

    registry = get_registry()
    layer2: list[Issue] = []
    if profile_url:
        plan = registry.get(profile_url)
        profiled_type = registry.resource_type_of(profile_url)
        if plan is None:
            layer2.append(Issue("error", "not-supported", rtype, f"Unknown profile {profile_url}"))
        elif profiled_type != rtype:
            layer2.append(
                Issue(
                    "error",
                    "invalid",
                    f"{rtype}.resourceType",
                    f"Profile {profile_url} is for {profiled_type} resources, not {rtype}",
                )
            )
        else:
            layer2.extend(registry.validate(resource, plan, rtype))
    else:
        base = registry.get_base(rtype)
        if base is not None:
            layer2.extend(registry.validate(resource, base, rtype))

    # nested resources (contained, Bundle entries, Parameters) get their base definition
    for path, nested in nested_resources(resource, rtype):
        ntype = nested.get("resourceType") if isinstance(nested, dict) else None
        base = registry.get_base(ntype) if isinstance(ntype, str) else None
        if base is not None:
            layer2.extend(registry.validate(nested, base, path))

    _merge(issues, layer1, layer2)
    return resource, issues


def _merge(issues: list[Issue], layer1: list[Issue], layer2: list[Issue]) -> None:
    """Append layer-2 issues, dropping those that repeat a layer-1 finding (same
    severity/code/location, e.g. a missing ``Claim.type`` is reported by both) or an
    identical layer-2 issue (an element checked through both a slice and an extension
    definition)."""
    seen_l1 = {(i.severity, i.code, i.expression) for i in layer1}
    seen: set[tuple[str, str, str, str]] = set()
    for i in layer2:
        if (i.severity, i.code, i.expression) in seen_l1:
            continue
        key = (i.severity, i.code, i.expression, i.diagnostics)
        if key in seen:
            continue
        seen.add(key)
        issues.append(i)


def warm_up(profile_urls: list[str] | None = None) -> None:
    """Load the data and compile plans/validators before the first request (optional;
    everything is otherwise compiled lazily, ~5-100 ms per profile on first use)."""
    registry = get_registry()
    urls = profile_urls if profile_urls is not None else registry.resource_profiles()
    get_index()
    layer = get_schema_layer()
    types: set[str] = set()
    for u in urls:
        registry.get(u)
        t = registry.resource_type_of(u)
        if t:
            types.add(t)
            registry.get_base(t)
    layer.compile_together(types)
    registry.release_sources()
