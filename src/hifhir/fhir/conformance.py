"""The IG's StructureDefinitions and ImplementationGuide, and search over the server's catalog of definitional
resources (CodeSystem, ValueSet, StructureDefinition, ImplementationGuide).

These resources are built on the fly (from the shipped IG package, `data/ig`, and for terminology from live
tables): they are not kinds and never enter the history table. Each is served at version "1" of the IG package
(`meta.versionId` "1", `meta.lastUpdated` the IG's publication date, `version` 1.0.0 when the artefact has none),
except the live code lists whose versions follow their data (see `fhir.terminology`).

Served StructureDefinitions are the IG's profiles and extensions as published (SUSHI snapshots), so a client can
discover what the server validates against; the few IG defects the validator corrects are listed in
`fhir/validation/corrections.py`.

Catalog search parameters (all types): `_id`, `url`, `name`, `title`, `status`, `version`; plus `type`, `kind`,
`derivation`, `base` for StructureDefinition and `system` (= url) for CodeSystem. Strings match case- and
accent-insensitively at the start (`:exact`, `:contains`), uris exactly (`:below` = prefix), tokens exactly;
comma-separated values are OR-ed, repeated parameters AND-ed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hifhir.fhir.errors import invalid
from hifhir.fhir.kind import IG
from hifhir.fhir.searchparams import normalise_text

DEFINITIONS = Path(__file__).resolve().parent.parent / "data" / "ig" / "definitions"
IG_VERSION = "1.0.0"
IG_DATE = "2022-05-31T00:00:00Z"  # "1.0.0 - ci-build, Active as of 2022-05-31" (IG README §0)
IG_DATE_US = 1_653_955_200_000_000
IG_ID = "openimis.fhir.r4"
STATIC_VERSION_ID = "1"
DEFINITION_TYPES = ("StructureDefinition", "ImplementationGuide")


# --- the catalog -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What catalog searches look at: one definitional resource, without its (possibly large) content."""

    resource_type: str
    id: str
    url: str
    name: str = ""
    title: str = ""
    status: str = ""
    version: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # e.g. StructureDefinition type, kind, derivation

    def values(self, field_name: str) -> str:
        if field_name in ("id", "url", "name", "title", "status", "version"):
            return str(getattr(self, field_name))
        return self.extra.get(field_name, "")


@dataclass(frozen=True, slots=True)
class CatalogParam:
    name: str
    type: str  # token | uri | string
    field: str
    documentation: str


def _common_params() -> dict[str, CatalogParam]:
    return {p.name: p for p in (
        CatalogParam("_id", "token", "id", "Logical id"),
        CatalogParam("url", "uri", "url", "Canonical URL (exact; :below for a prefix)"),
        CatalogParam("name", "string", "name", "Computer-friendly name"),
        CatalogParam("title", "string", "title", "Human-friendly title"),
        CatalogParam("status", "token", "status", "draft | active | retired"),
        CatalogParam("version", "token", "version", "Business version"),
    )}


CATALOG_PARAMS: dict[str, dict[str, CatalogParam]] = {
    "CodeSystem": {**_common_params(),
                   "system": CatalogParam("system", "uri", "url", "The code system's URL (same as url)")},
    "ValueSet": _common_params(),
    "StructureDefinition": {**_common_params(), **{p.name: p for p in (
        CatalogParam("type", "token", "type", "Type defined or constrained (e.g. Patient, Extension)"),
        CatalogParam("kind", "token", "kind", "primitive-type | complex-type | resource | logical"),
        CatalogParam("derivation", "token", "derivation", "specialization | constraint"),
        CatalogParam("base", "uri", "base", "Definition this one is based on"),
    )}},
    "ImplementationGuide": _common_params(),
}

_STRING_MODIFIERS = {None, "exact", "contains"}
_URI_MODIFIERS = {None, "below"}
_TOKEN_MODIFIERS = {None}


def _matcher(param: CatalogParam, modifier: str | None, values: list[str]) -> Callable[[CatalogEntry], bool]:
    key = param.field
    if param.type == "string":
        if modifier not in _STRING_MODIFIERS:
            raise invalid(f"Modifier ':{modifier}' is not supported on {param.name}", param.name)
        if modifier == "exact":
            wanted = set(values)
            return lambda e: e.values(key) in wanted
        folded = [normalise_text(v) for v in values]
        if modifier == "contains":
            return lambda e: any(v in normalise_text(e.values(key)) for v in folded)
        return lambda e: any(normalise_text(e.values(key)).startswith(v) for v in folded)
    if param.type == "uri":
        if modifier not in _URI_MODIFIERS:
            raise invalid(f"Modifier ':{modifier}' is not supported on {param.name}", param.name)
        canon = [v.split("|", 1)[0] for v in values]
        if modifier == "below":
            return lambda e: any(e.values(key).startswith(v) for v in canon)
        wanted = set(canon)
        return lambda e: e.values(key) in wanted
    if modifier not in _TOKEN_MODIFIERS:
        raise invalid(f"Modifier ':{modifier}' is not supported on {param.name}", param.name)
    wanted = {v.rpartition("|")[2] for v in values}  # a token may come as system|code
    return lambda e: e.values(key) in wanted


def split_values(raw: str) -> list[str]:
    """Comma-separated OR values (`\\,` is a literal comma)."""
    parts, cur, i = [], [], 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if raw[i] == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(raw[i])
        i += 1
    parts.append("".join(cur))
    return [p for p in parts if p != ""]


def catalog_filter(resource_type: str, criteria: list[tuple[str, str | None, str]]
                   ) -> Callable[[CatalogEntry], bool]:
    """One predicate for (name, modifier, raw value) criteria; unknown parameters were dropped by the caller."""
    params = CATALOG_PARAMS[resource_type]
    tests = [_matcher(params[name], modifier, split_values(value)) for name, modifier, value in criteria]
    return lambda entry: all(t(entry) for t in tests)


def search(entries: Iterable[CatalogEntry], predicate: Callable[[CatalogEntry], bool]) -> list[CatalogEntry]:
    return sorted((e for e in entries if predicate(e)), key=lambda e: e.id)


# --- StructureDefinition and ImplementationGuide -------------------------------------------------------------


def _file(resource_type: str, res_id: str) -> Path:
    return DEFINITIONS / f"{resource_type}-{res_id}.json"


@functools.cache
def _definition_index() -> dict[str, dict[str, CatalogEntry]]:
    """Id → entry per type, read once (the snapshots are parsed here and dropped: ~7 MB of JSON)."""
    out: dict[str, dict[str, CatalogEntry]] = {t: {} for t in DEFINITION_TYPES}
    for resource_type in DEFINITION_TYPES:
        for path in sorted(DEFINITIONS.glob(f"{resource_type}-*.json")):
            res = orjson.loads(path.read_bytes())
            extra = {}
            if resource_type == "StructureDefinition":
                extra = {"type": res.get("type", ""), "kind": res.get("kind", ""),
                         "derivation": res.get("derivation", ""), "base": res.get("baseDefinition", "")}
            entry = CatalogEntry(resource_type, res["id"], res.get("url", ""), res.get("name", ""),
                                 res.get("title", ""), res.get("status", ""), res.get("version", IG_VERSION), extra)
            out[resource_type][entry.id] = entry
    return out


def definition_entries(resource_type: str) -> list[CatalogEntry]:
    return list(_definition_index()[resource_type].values())


def static_meta() -> dict[str, str]:
    return {"versionId": STATIC_VERSION_ID, "lastUpdated": IG_DATE}


@functools.lru_cache(maxsize=16)
def definition_body(resource_type: str, res_id: str) -> bytes | None:
    """The served JSON of an IG StructureDefinition or ImplementationGuide, or None when unknown."""
    if res_id not in _definition_index().get(resource_type, {}):
        return None
    res = orjson.loads(_file(resource_type, res_id).read_bytes())
    out: dict[str, Any] = {"resourceType": res.pop("resourceType"), "id": res.pop("id"), "meta": static_meta()}
    url = res.pop("url", None)
    if url is not None:
        out["url"] = url
    out["version"] = res.pop("version", IG_VERSION)
    out.update(res)
    return orjson.dumps(out)


def implementation_guide_url() -> str:
    return f"{IG}/ImplementationGuide/{IG_ID}"
