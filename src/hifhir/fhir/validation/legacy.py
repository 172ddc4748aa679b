"""Lenient-mode normalisation for legacy openIMIS clients (the openIMIS-compatible alias).

The reference openIMIS backend accepted (a) dateTime values without a time zone and
(b) booleans sent as strings ("True"/"False"/"true"/"false"). In lenient mode these are
accepted with a *warning*: booleans are converted in a copy of the resource; dateTimes are
left as they are (the server decides how to interpret a local time), and the schema layer
then ignores their pattern error.

The walk is typed by the FHIR JSON schema definitions, so only elements that really are
``boolean`` / ``dateTime`` / ``instant`` are touched (a ``valueString: "true"`` stays a
string).
"""

from __future__ import annotations

import re
from typing import Any

from hifhir.fhir.validation.issues import Issue, warning
from hifhir.fhir.validation.schema import DATETIME_NO_TZ_RE, SchemaLayer, get_schema_layer

_BOOL_STRINGS = {"True": True, "true": True, "False": False, "false": False}
_REF_RE = re.compile(r"^#/definitions/([A-Za-z0-9_]+)$")

TypeMap = dict[str, dict[str, str]]
_type_map: TypeMap | None = None


def _build_type_map(layer: SchemaLayer) -> TypeMap:
    out: TypeMap = {}
    for name, d in layer.definitions.items():
        props = d.get("properties")
        if not isinstance(props, dict):
            continue
        m: dict[str, str] = {}
        for pname, p in props.items():
            ref = p.get("$ref") or p.get("items", {}).get("$ref")
            if isinstance(ref, str):
                mm = _REF_RE.match(ref)
                if mm:
                    m[pname] = mm.group(1)
        out[name] = m
    return out


def _types() -> TypeMap:
    global _type_map
    if _type_map is None:
        _type_map = _build_type_map(get_schema_layer())
    return _type_map


def normalise_legacy(resource: dict[str, Any]) -> tuple[dict[str, Any], list[Issue]]:
    """Return ``(resource, warnings)``; the resource is a converted copy only if needed."""
    warnings: list[Issue] = []
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(rtype, str):
        return resource, warnings
    new = _walk(resource, rtype, rtype, _types(), warnings)
    return new, warnings


def _walk(obj: Any, defname: str, path: str, tmap: TypeMap, warnings: list[Issue]) -> Any:
    if defname == "ResourceList" and isinstance(obj, dict) and isinstance(obj.get("resourceType"), str):
        defname = obj["resourceType"]
    props = tmap.get(defname)
    if props is None or not isinstance(obj, dict):
        return obj
    changed: dict[str, Any] = {}
    for key, val in obj.items():
        target = props.get(key)
        if target is None:
            continue
        if isinstance(val, list):
            new_list = [_value(v, target, f"{path}.{key}[{i}]", tmap, warnings) for i, v in enumerate(val)]
            if any(a is not b for a, b in zip(new_list, val, strict=True)):
                changed[key] = new_list
        else:
            nv = _value(val, target, f"{path}.{key}", tmap, warnings)
            if nv is not val:
                changed[key] = nv
    if not changed:
        return obj
    out = dict(obj)
    out.update(changed)
    return out


def _value(v: Any, target: str, path: str, tmap: TypeMap, warnings: list[Issue]) -> Any:
    if target == "boolean":
        if isinstance(v, str) and v in _BOOL_STRINGS:
            warnings.append(
                warning(
                    "value",
                    path,
                    f"Boolean given as the string {v!r} at {path}; accepted as {_BOOL_STRINGS[v]}",
                )
            )
            return _BOOL_STRINGS[v]
        return v
    if target in ("dateTime", "instant"):
        if isinstance(v, str) and DATETIME_NO_TZ_RE.match(v):
            warnings.append(
                warning("value", path, f"{target} {v!r} at {path} has no time zone; accepted in lenient mode")
            )
        return v
    if isinstance(v, dict):
        return _walk(v, target, path, tmap, warnings)
    return v
