"""Small readers and builders for the FHIR datatypes the IG profiles share (identifiers, extensions, codes)."""

from __future__ import annotations

from typing import Any

from hifhir.fhir.kind import CS, EXT, IDENTIFIER_SYSTEM

# --- reading -------------------------------------------------------------------------------------------


def identifier_value(resource: dict[str, Any], type_code: str) -> str | None:
    for ident in resource.get("identifier") or ():
        for coding in (ident.get("type") or {}).get("coding") or ():
            if coding.get("code") == type_code:
                return ident.get("value")
    return None


def extension(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    url = EXT + name
    for ext in container.get("extension") or ():
        if ext.get("url") == url:
            return ext
    return None


def sub_extension(ext: dict[str, Any], url: str) -> dict[str, Any] | None:
    for sub in ext.get("extension") or ():
        if sub.get("url") == url:
            return sub
    return None


def ext_value(container: dict[str, Any], name: str, value_key: str) -> Any:
    ext = extension(container, name)
    return None if ext is None else ext.get(value_key)


def first_code(concept: dict[str, Any] | None) -> str | None:
    if not concept:
        return None
    for coding in concept.get("coding") or ():
        if coding.get("code") is not None:
            return coding["code"]
    return None


def first_coding(concept: dict[str, Any] | None) -> dict[str, Any] | None:
    if not concept:
        return None
    for coding in concept.get("coding") or ():
        return coding
    return None


def telecom_value(resource: dict[str, Any], system: str) -> str | None:
    for tel in resource.get("telecom") or ():
        if tel.get("system") == system:
            return tel.get("value")
    return None


# --- building ------------------------------------------------------------------------------------------


def identifiers(code: str | None, uuid: str | None) -> list[dict[str, Any]]:
    out = []
    if code is not None:
        out.append(_identifier("Code", code))
    if uuid is not None:
        out.append(_identifier("UUID", uuid))
    return out


def _identifier(type_code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": IDENTIFIER_SYSTEM, "code": type_code}]}, "value": value}


def reference(res_type: str, res_id: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": f"{res_type}/{res_id}"}
    if display:
        ref["display"] = display
    return ref


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def ig_concept(cs_id: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(CS + cs_id, code, display)]}


def ext(name: str, value_key: str, value: Any) -> dict[str, Any]:
    return {"url": EXT + name, value_key: value}


def telecoms(**by_system: str | None) -> list[dict[str, Any]]:
    return [{"system": system, "value": value} for system, value in by_system.items() if value]
