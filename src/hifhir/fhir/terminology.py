"""Terminology: the IG's CodeSystems and ValueSets, the openIMIS code lists served live, items/services and their
price lists, with `$expand`, `$lookup` and `$validate-code`.

Where each CodeSystem comes from (ids and URLs are the IG's, `{IG}/CodeSystem/<id>`):

* the openIMIS code lists that are configuration (`store.codelists.EDITABLE_LISTS`: education, profession,
  identification type, relationship, family type, confirmation type, HF legal form and level, PH legal form and
  activity, and the diagnoses `diagnosis-ICD10-level1`) are built from `code_list_entry`: `concept` = the active
  entries in list order, `content` complete, `count`, `status` active, `meta.lastUpdated` = the newest entry
  change and `meta.versionId` (= `version`) a token that changes whenever the list does. They are editable with
  PUT (codes left out are deactivated, never deleted: data already coded keeps its meaning, `$lookup` still
  finds such a code and flags it `inactive`, `$validate-code` refuses it);
* `medical-item` / `medical-service` (reference-module compatible, not in the IG): current items / services,
  code → name, from `medical_item` / `medical_service` (read-only here: they change through Medication and
  ActivityDefinition);
* every other IG CodeSystem (including `organization-hf-care-type`, whose I/O/B codes drive the claim care-type
  check and so are not configuration) is served as shipped, read-only.

ValueSets are the IG's, expanded from their `compose` (a whole live list follows the list). IG defect §9.5: VS
`group-type` includes the core `http://hl7.org/fhir/group-type` system instead of the openIMIS CodeSystem; it is
served and expanded with the openIMIS family types (the validator accepts both systems). Price lists (domain
§2.13), as the reference module serves them:

* `ValueSet/items-pricelist`, `ValueSet/services-pricelist`: every line of every current list (an item on two
  lists appears twice);
* `ValueSet/items-pricelist-<health facility id>`, `ValueSet/services-pricelist-<health facility id>`: the
  facility's list (empty when it has none).

A read of a price-list ValueSet returns its definition *and* its expansion (the reference's shape). Each
`expansion.contains` entry is `{system: {IG}/CodeSystem/medical-item|medical-service, code, display: name}` with
three properties in the R4 form of R5's `contains.property`, the cross-version extension
`http://hl7.org/fhir/5.0/StructureDefinition/extension-ValueSet.expansion.contains.property` (sub-extensions
`code` valueCode and `value`): `price` (valueDecimal: the effective price, the list's override or else the
item's/service's own price), `pricelist_name` (valueString), `pricelist_date` (valueDateTime, a date). On the
openIMIS alias base (`/api/api_fhir_r4/`) each entry also carries the reference's literal, R5-style
`property: [{code, valueString}]` with the same three codes, for its existing clients.

Caching: each process keeps one snapshot per code list (and per database), revalidated on every use by the
list's change marker (`store.codelists.LIST_CHANGED`: its newest `last_updated`, one probe of the
`(list_name, last_updated)` index) — so an edit made by any process is seen by all at once, and nothing re-reads a
whole list unless it changed. Expansions of IG ValueSets are built once per snapshot, with a sorted word index
for `filter` (a bisection per filter word, not a scan of the list) and a memo of recent filters; price lists are
read per request (one query).

The profile validator asks the same snapshots for the value sets built on live lists (`register_live_source`),
within a request whose engine the API binds with `bind_engine`.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select

from hifhir.domain.pricelists import PriceLine, all_price_lines, facility_price_lines
from hifhir.fhir.conformance import IG_DATE, IG_DATE_US, IG_VERSION, STATIC_VERSION_ID, CatalogEntry
from hifhir.fhir.errors import FhirError, invalid, not_found
from hifhir.fhir.kind import IG, instant
from hifhir.fhir.searchparams import normalise_text
from hifhir.fhir.validation.terminology import register_live_source
from hifhir.store.codelists import (
    DIAGNOSIS_LIST,
    EDITABLE_LISTS,
    TERMINOLOGY,
    CodeListError,
    ListSnapshot,
    replace_codes,
)
from hifhir.store.codelists import snapshots as codelist_snapshots
from hifhir.store.tables import health_facility, is_current, medical_item, medical_service

CS_BASE = f"{IG}/CodeSystem/"
VS_BASE = f"{IG}/ValueSet/"
CORE_GROUP_TYPE = "http://hl7.org/fhir/group-type"
CONTAINS_PROPERTY = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ValueSet.expansion.contains.property"
# Ids clients of the reference module and older IG builds use (IG README §6, reference urls.py).
ALIASES = {
    "diagnosis": DIAGNOSIS_LIST,
    "patient-identification-types": "patient-identification-type",
    "group-types": "group-type",
}
_FILTER_MEMO = 1024  # filters remembered per expansion (a picker's frequent words)


class CannotExpand(Exception):
    """A compose this server cannot expand (a system it does not hold, a filter)."""


# --- concepts and code systems -----------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(normalise_text(text))


def filter_tokens(text: str | None) -> tuple[str, ...]:
    return tuple(_words(text)) if text else ()


def _search_words(code: str, display: str) -> tuple[str, ...]:
    """What `filter` words are matched against: the folded code, its parts and the display's words."""
    return tuple(dict.fromkeys((normalise_text(code), *_words(code), *_words(display))))


@dataclass(frozen=True, slots=True)
class Concept:
    code: str
    display: str
    active: bool = True


@dataclass(slots=True)
class CodeSystemView:
    """One version of a code system as served: its resource and its concepts (active or not)."""

    id: str
    url: str
    name: str
    version: str
    version_id: str
    last_updated: int  # µs
    concepts: tuple[Concept, ...]  # every concept, in list order
    resource: dict[str, Any]  # the served CodeSystem (with resourceType, id, meta)
    editable: bool = False
    _by_code: dict[str, Concept] | None = None
    _body: bytes | None = None

    def find(self, code: str) -> Concept | None:
        if self._by_code is None:
            self._by_code = {c.code: c for c in self.concepts}
        return self._by_code.get(code)

    def active(self) -> Iterable[Concept]:
        return (c for c in self.concepts if c.active)

    def body(self) -> bytes:
        if self._body is None:
            self._body = orjson.dumps(self.resource)
        return self._body


@functools.cache
def _ig_files() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The IG's CodeSystems and ValueSets by id, parsed once."""
    codesystems: dict[str, dict[str, Any]] = {}
    valuesets: dict[str, dict[str, Any]] = {}
    for path in sorted(TERMINOLOGY.glob("*.json")):
        res = orjson.loads(path.read_bytes())
        if res["resourceType"] == "ValueSet":
            valuesets[res["id"]] = res
        elif res["id"] in EDITABLE_LISTS:  # the concepts come from the database (1,910 diagnoses not kept twice)
            codesystems[res["id"]] = {k: v for k, v in res.items() if k != "concept"}
        else:
            codesystems[res["id"]] = res
    return codesystems, valuesets


def _ig_codesystem(cs_id: str) -> dict[str, Any] | None:
    return _ig_files()[0].get(cs_id)


def _ig_valueset(vs_id: str) -> dict[str, Any] | None:
    return _ig_files()[1].get(vs_id)


def _served(resource: dict[str, Any], meta: dict[str, str], version: str) -> dict[str, Any]:
    """resourceType, id, meta, url, version first, then the rest of `resource` in its order."""
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta,
                           "url": resource["url"], "version": version}
    out.update((k, v) for k, v in resource.items() if k not in out)
    return out


@functools.cache
def _static_codesystem(cs_id: str) -> CodeSystemView | None:
    res = _ig_codesystem(cs_id)
    if res is None or cs_id in EDITABLE_LISTS:
        return None
    meta = {"versionId": STATIC_VERSION_ID, "lastUpdated": IG_DATE}
    concepts = tuple(Concept(c["code"], c.get("display", c["code"])) for c in _flatten(res.get("concept", [])))
    return CodeSystemView(cs_id, res["url"], res.get("name", ""), IG_VERSION, STATIC_VERSION_ID, IG_DATE_US,
                          concepts, _served(res, meta, IG_VERSION))


def _flatten(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in concepts:
        out.append(c)
        out.extend(_flatten(c.get("concept", [])))
    return out


# --- live code lists: per-process snapshots revalidated per use ---------------------------------------------

def _version_token(newest: int, count: int | None = None) -> str:
    """An opaque version id that moves with the data: the newest change in hexadecimal µs (plus the row count
    for tables, whose rows can be deleted)."""
    return f"{newest:x}" if count is None else f"{newest:x}.{count}"


def _list_view(list_name: str, snapshot: ListSnapshot) -> CodeSystemView:
    newest = snapshot.changed_at
    ig = _ig_codesystem(list_name) or {}
    version_id = _version_token(newest)
    concepts = tuple(Concept(e.code, e.display, e.active) for e in snapshot.entries)
    active = [{"code": c.code, "display": c.display} for c in concepts if c.active]
    meta: dict[str, str] = {"versionId": version_id}
    if newest:
        meta["lastUpdated"] = instant(newest)
    description = ig.get("description", "")
    if list_name == DIAGNOSIS_LIST:
        description = "The diagnoses configured in this openIMIS scheme (ICD-10 level 1 in the demo data)."
    resource = {
        "resourceType": "CodeSystem", "id": list_name, "meta": meta, "url": CS_BASE + list_name,
        "version": version_id, "name": ig.get("name", list_name), "title": ig.get("title", list_name),
        "status": "active", "description": description, "content": "complete", "count": len(active),
        "concept": active,
    }
    if not active:
        del resource["concept"]
    return CodeSystemView(list_name, CS_BASE + list_name, resource["name"], version_id, version_id,
                          newest, concepts, resource, editable=True)


def list_view(conn: Connection, list_name: str) -> CodeSystemView:
    """The current CodeSystem of an editable code list (built once per snapshot of the list: store.codelists)."""
    snapshot = codelist_snapshots.current(conn, list_name)
    return snapshot.derived("CodeSystem", lambda: _list_view(list_name, snapshot))


# --- items and services ----------------------------------------------------------------------------------------

_TABLE_CODESYSTEMS = {
    "medical-item": (medical_item, "MedicalItemCS", "Medical Item",
                     "The medical items (drugs and consumables) registered in this openIMIS scheme: item code → "
                     "name. Maintained through Medication."),
    "medical-service": (medical_service, "MedicalServiceCS", "Medical Service",
                        "The medical services registered in this openIMIS scheme: service code → name. "
                        "Maintained through ActivityDefinition."),
}


def _table_view(conn: Connection, cs_id: str) -> CodeSystemView:
    table, name, title, description = _TABLE_CODESYSTEMS[cs_id]
    rows = conn.execute(select(table.c.code, table.c.name, table.c.last_updated)
                        .where(is_current(table)).order_by(table.c.code)).all()
    newest = max((int(r.last_updated) for r in rows), default=0)
    version_id = _version_token(newest, len(rows))
    meta: dict[str, str] = {"versionId": version_id}
    if newest:
        meta["lastUpdated"] = instant(newest)
    resource: dict[str, Any] = {
        "resourceType": "CodeSystem", "id": cs_id, "meta": meta, "url": CS_BASE + cs_id, "version": version_id,
        "name": name, "title": title, "status": "active", "description": description, "content": "complete",
        "count": len(rows), "concept": [{"code": r.code, "display": r.name} for r in rows],
    }
    if not rows:
        del resource["concept"]
    concepts = tuple(Concept(r.code, r.name) for r in rows)
    return CodeSystemView(cs_id, CS_BASE + cs_id, name, version_id, version_id, newest, concepts, resource)


# --- finding code systems ---------------------------------------------------------------------------------------


def canonical(url: str) -> str:
    """Strip `|version`; the reference module sometimes writes the IG base with a double slash."""
    url = url.split("|", 1)[0]
    return url.replace("openimis_fhir_r4_ig//", "openimis_fhir_r4_ig/")


def resolve_id(res_id: str) -> str:
    return ALIASES.get(res_id, res_id)


def get_codesystem(conn: Connection, cs_id: str) -> CodeSystemView | None:
    cs_id = resolve_id(cs_id)
    if cs_id in EDITABLE_LISTS:
        return list_view(conn, cs_id)
    if cs_id in _TABLE_CODESYSTEMS:
        return _table_view(conn, cs_id)
    return _static_codesystem(cs_id)


def codesystem_by_url(conn: Connection, url: str) -> CodeSystemView | None:
    url = canonical(url)
    if not url.startswith(CS_BASE):
        return None
    return get_codesystem(conn, url[len(CS_BASE):])


def codesystem_ids() -> list[str]:
    return sorted({*_ig_files()[0], *_TABLE_CODESYSTEMS})


def codesystem_entries() -> list[CatalogEntry]:
    out = []
    for cs_id in codesystem_ids():
        if cs_id in _TABLE_CODESYSTEMS:
            _t, name, title, _d = _TABLE_CODESYSTEMS[cs_id]
            out.append(CatalogEntry("CodeSystem", cs_id, CS_BASE + cs_id, name, title, "active", ""))
            continue
        res = _ig_codesystem(cs_id) or {}
        live = cs_id in EDITABLE_LISTS
        out.append(CatalogEntry("CodeSystem", cs_id, res.get("url", CS_BASE + cs_id), res.get("name", ""),
                                res.get("title", ""), "active" if live else res.get("status", ""),
                                "" if live else IG_VERSION))
    return out


# --- expansions -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Expansion:
    """The members of a value set, ready to serialise, with what `filter` searches."""

    contains: list[dict[str, Any]]
    search: list[tuple[str, ...]]  # per entry: the words a filter word may be a prefix of (until indexed)
    keys: list[tuple[str, str]]  # (system, code) per entry
    _words: list[str] | None = None  # every (word, entry) pair, sorted by word: a prefix is a bisected range
    _owners: list[int] | None = None
    _memo: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    _pairs: frozenset[tuple[str, str]] | None = None
    _lookup: dict[tuple[str | None, str], int] | None = None

    def _index(self) -> tuple[list[str], list[int]]:
        if self._words is None or self._owners is None:
            pairs = sorted((w, i) for i, words in enumerate(self.search) for w in words)
            self._words = [w for w, _ in pairs]
            self._owners = [i for _, i in pairs]
            self.search = []  # the index replaces them (a long list stays in every worker's memory)
        return self._words, self._owners

    def matching(self, tokens: tuple[str, ...]) -> Sequence[int]:
        """Indexes (in list order) of the entries with, for every token, a code or display word starting so."""
        if not tokens:
            return range(len(self.contains))
        hit = self._memo.get(tokens)
        if hit is not None:
            return hit
        words, owners = self._index()
        found: set[int] | None = None
        for token in sorted(set(tokens), key=len, reverse=True):  # the longest word is the most selective
            lo = bisect_left(words, token)
            hi = bisect_left(words, token + "\U0010ffff", lo)
            here = set(owners[lo:hi])
            found = here if found is None else found & here
            if not found:
                break
        result = sorted(found or ())
        if len(self._memo) >= _FILTER_MEMO:
            self._memo.pop(next(iter(self._memo)))
        self._memo[tokens] = result
        return result

    def pairs(self) -> frozenset[tuple[str, str]]:
        if self._pairs is None:
            self._pairs = frozenset(self.keys)
        return self._pairs

    def find(self, system: str | None, code: str) -> dict[str, Any] | None:
        """The member with this code (and system, when given)."""
        if self._lookup is None:
            lookup: dict[tuple[str | None, str], int] = {}
            for i, (s, c) in enumerate(self.keys):
                lookup.setdefault((s, c), i)
                lookup.setdefault((None, c), i)
            self._lookup = lookup
        i = self._lookup.get((system, code))
        return None if i is None else self.contains[i]


def _expansion(entries: Iterable[tuple[str, str, str, dict[str, Any] | None]]) -> Expansion:
    contains, search, keys = [], [], []
    for system, code, display, extra in entries:
        entry: dict[str, Any] = {"system": system, "code": code}
        if display:
            entry["display"] = display
        if extra:
            entry.update(extra)
        contains.append(entry)
        search.append(_search_words(code, display))
        keys.append((system, code))
    return Expansion(contains, search, keys)


def _corrected_compose(vs_id: str, compose: dict[str, Any]) -> dict[str, Any]:
    """IG defect §9.5: VS group-type includes the core group-type system, meant as the openIMIS one."""
    if vs_id != "group-type":
        return compose
    include = [{**inc, "system": CS_BASE + "group-type"} if inc.get("system") == CORE_GROUP_TYPE else inc
               for inc in compose.get("include", [])]
    return {**compose, "include": include}


def _expand_compose(conn: Connection, compose: dict[str, Any]) -> Expansion:
    members: list[tuple[str, str, str, dict[str, Any] | None]] = []
    seen: set[tuple[str, str]] = set()
    for inc in compose.get("include") or []:
        if not isinstance(inc, dict) or inc.get("filter") or inc.get("valueSet"):
            raise CannotExpand("includes by filter or by value set are not supported")
        system = inc.get("system")
        if not isinstance(system, str):
            raise CannotExpand("every include needs a system")
        cs = codesystem_by_url(conn, system)
        if inc.get("concept"):
            for c in inc["concept"]:
                code = c.get("code") if isinstance(c, dict) else None
                if not isinstance(code, str):
                    raise CannotExpand("an included concept has no code")
                known = cs.find(code) if cs is not None else None
                if cs is not None and (known is None or not known.active):
                    continue  # enumerated but not (or no longer) in the system
                display = c.get("display") or (known.display if known else "")
                if (system, code) not in seen:
                    seen.add((system, code))
                    members.append((system, code, display, None))
            continue
        if cs is None:
            raise CannotExpand(f"code system {system} is not held by this server")
        for concept in cs.active():
            if (system, concept.code) not in seen:
                seen.add((system, concept.code))
                members.append((system, concept.code, concept.display, None))
    excluded: set[tuple[str, str]] = set()
    for exc in compose.get("exclude") or []:
        # An exclude of another value set (location-type excludes the core location-physical-type, a different
        # system) cannot remove any of the included codes here: only system-based excludes are applied.
        if isinstance(exc, dict) and isinstance(exc.get("system"), str):
            system = exc["system"]
            if exc.get("concept"):
                excluded |= {(system, c.get("code")) for c in exc["concept"] if isinstance(c, dict)}
            else:
                excluded |= {(s, c) for s, c, _d, _x in members if s == system}
    return _expansion(m for m in members if (m[0], m[1]) not in excluded)


@dataclass(slots=True)
class ValueSetView:
    id: str
    url: str
    resource: dict[str, Any]  # the definition as served (resourceType, id, meta...)
    expansion: Expansion
    expand_on_read: bool = False  # price lists: a read returns the expansion too (reference shape)
    system_aliases: dict[str, str] = field(default_factory=dict)  # a system accepted as another one


def _live_lists_of(compose: dict[str, Any]) -> tuple[str, ...]:
    """The editable lists a compose includes whole."""
    out = []
    for inc in compose.get("include") or []:
        system = canonical(inc.get("system") or "")
        if system.startswith(CS_BASE) and system[len(CS_BASE):] in EDITABLE_LISTS and not inc.get("concept"):
            out.append(system[len(CS_BASE):])
    return tuple(out)


@functools.cache
def _ig_valueset_definition(vs_id: str) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    res = _ig_valueset(vs_id)
    if res is None:
        return None
    res = {**res, "compose": _corrected_compose(vs_id, res.get("compose") or {})}
    meta = {"versionId": STATIC_VERSION_ID, "lastUpdated": IG_DATE}
    return _served(res, meta, IG_VERSION), _live_lists_of(res["compose"])


class _ExpansionCache:
    """Expansions of IG value sets, keyed by the versions of the live lists they include."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str], tuple[tuple[str, ...], Expansion]] = {}

    def get(self, conn: Connection, vs_id: str, definition: dict[str, Any], lists: tuple[str, ...]) -> Expansion:
        versions = tuple(list_view(conn, name).version_id for name in lists)
        key = (id(conn.engine.pool) if lists else 0, vs_id)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == versions:
            return hit[1]
        expansion = _expand_compose(conn, definition["compose"])
        self._cache[key] = (versions, expansion)
        return expansion


_expansions = _ExpansionCache()

# --- price lists ------------------------------------------------------------------------------------------------

_PRICELISTS = {
    "items-pricelist": ("item", "medical-item", "ItemsPricelistVS", "Medical Items Pricelist", "Medical items"),
    "services-pricelist": ("service", "medical-service", "ServicesPricelistVS", "Medical Services Pricelist",
                           "Medical services"),
}


def _property(code: str, value_key: str, value: Any) -> dict[str, Any]:
    return {"url": CONTAINS_PROPERTY, "extension": [{"url": "code", "valueCode": code},
                                                    {"url": "value", value_key: value}]}


def _price_entry(line: PriceLine, legacy: bool) -> dict[str, Any]:
    price = f"{line.price:.2f}"
    date_text = line.list_date.isoformat()
    extra: dict[str, Any] = {"extension": [
        _property("price", "valueDecimal", orjson.Fragment(price.encode())),
        _property("pricelist_name", "valueString", line.list_name),
        _property("pricelist_date", "valueDateTime", date_text),
    ]}
    if legacy:
        extra["property"] = [{"code": "price", "valueString": price},
                             {"code": "pricelist_name", "valueString": line.list_name},
                             {"code": "pricelist_date", "valueString": date_text}]
    return extra


def _pricelist_view(conn: Connection, vs_id: str, legacy: bool) -> ValueSetView | None:
    base, _, hf_id = vs_id.partition("-pricelist-")
    base_id = f"{base}-pricelist" if hf_id else vs_id
    spec = _PRICELISTS.get(base_id)
    if spec is None:
        return None
    kind, cs_id, name, title, what = spec
    if hf_id:
        hf = conn.execute(select(health_facility.c.pk, health_facility.c.code, health_facility.c.name)
                          .where(health_facility.c.id == hf_id, is_current(health_facility))).first()
        if hf is None:
            return None
        lines = facility_price_lines(conn, hf.pk, kind)  # type: ignore[arg-type]
        title = f"{title} of {hf.name}"
        description = (f"{what} health facility {hf.code} may claim, at the prices of its price list "
                       "(the list's override, else the scheme price).")
    else:
        lines = all_price_lines(conn, kind)  # type: ignore[arg-type]
        description = f"{what} of every current openIMIS price list, with their prices."
    system = CS_BASE + cs_id
    resource = {"resourceType": "ValueSet", "id": vs_id, "url": VS_BASE + vs_id, "name": name, "title": title,
                "status": "active", "description": description, "compose": {"include": [{"system": system}]}}
    expansion = _expansion((system, line.code, line.name, _price_entry(line, legacy)) for line in lines)
    return ValueSetView(vs_id, VS_BASE + vs_id, resource, expansion, expand_on_read=True)


def get_valueset(conn: Connection, vs_id: str, *, legacy: bool = False) -> ValueSetView | None:
    """A ValueSet by id; `legacy` adds the reference module's R5-style properties to price-list entries."""
    vs_id = resolve_id(vs_id)
    found = _ig_valueset_definition(vs_id)
    if found is not None:
        definition, lists = found
        aliases = {CORE_GROUP_TYPE: CS_BASE + "group-type"} if vs_id == "group-type" else {}
        return ValueSetView(vs_id, definition["url"], definition,
                            _expansions.get(conn, vs_id, definition, lists), system_aliases=aliases)
    if "pricelist" in vs_id:
        return _pricelist_view(conn, vs_id, legacy)
    return None


def valueset_by_url(conn: Connection, url: str, *, legacy: bool = False) -> ValueSetView | None:
    url = canonical(url)
    if not url.startswith(VS_BASE):
        return None
    return get_valueset(conn, url[len(VS_BASE):], legacy=legacy)


def valueset_entries() -> list[CatalogEntry]:
    out = [CatalogEntry("ValueSet", vs_id, res["url"], res.get("name", ""), res.get("title", ""),
                        res.get("status", ""), IG_VERSION) for vs_id, res in sorted(_ig_files()[1].items())]
    for vs_id, (_k, _cs, name, title, _w) in _PRICELISTS.items():
        out.append(CatalogEntry("ValueSet", vs_id, VS_BASE + vs_id, name, title, "active", ""))
    return out


def valueset_entry(conn: Connection, vs_id: str) -> CatalogEntry | None:
    """The catalog entry of a per-facility price list (they are not enumerated, only found by id or url)."""
    view = _pricelist_view(conn, vs_id, False) if "-pricelist-" in vs_id else None
    if view is None:
        return None
    res = view.resource
    return CatalogEntry("ValueSet", view.id, view.url, res["name"], res["title"], res["status"], "")


def inline_valueset(conn: Connection, resource: dict[str, Any]) -> ValueSetView:
    """A ValueSet the client sent (`$expand` / `$validate-code` with a valueSet parameter)."""
    compose = resource.get("compose")
    if not isinstance(compose, dict):
        raise invalid("The valueSet parameter needs a compose", "valueSet")
    try:
        expansion = _expand_compose(conn, compose)
    except CannotExpand as exc:
        raise FhirError.one(422, "not-supported", f"Cannot expand the value set: {exc}",
                            expression="valueSet") from None
    return ValueSetView(str(resource.get("id") or ""), str(resource.get("url") or ""), resource, expansion)


def valueset_resource(view: ValueSetView) -> dict[str, Any]:
    """The read of a ValueSet: its definition (plus, for price lists, the full expansion)."""
    if not view.expand_on_read:
        return view.resource
    return expand_resource(view, (), None, 0, with_parameters=False)


def expand_resource(view: ValueSetView, tokens: tuple[str, ...], count: int | None, offset: int, *,
                    filter_text: str | None = None, with_parameters: bool = True) -> dict[str, Any]:
    """The `$expand` answer: the ValueSet with `expansion` (total, offset, the page of `contains`)."""
    exp = view.expansion
    matches = exp.matching(tokens)
    total = len(matches)
    page = matches[offset:] if count is None else matches[offset:offset + count]
    expansion: dict[str, Any] = {"timestamp": _now_text(), "total": total}
    if offset or count is not None:
        expansion["offset"] = offset
    if with_parameters:
        params = []
        if filter_text is not None:
            params.append({"name": "filter", "valueString": filter_text})
        if count is not None:
            params.append({"name": "count", "valueInteger": count})
        if offset:
            params.append({"name": "offset", "valueInteger": offset})
        if params:
            expansion["parameter"] = params
    if len(page):
        contains = exp.contains
        expansion["contains"] = [contains[i] for i in page]
    res = view.resource
    out = {k: v for k, v in res.items() if k != "expansion"}
    out["expansion"] = expansion
    return out


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- $lookup and $validate-code ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodingIn:
    system: str | None
    code: str
    display: str | None
    version: str | None = None


def lookup(view: CodeSystemView, code: str) -> dict[str, Any]:
    """`$lookup` output for a code of `view`; an unknown code is a 404 (the spec's "error" case)."""
    concept = view.find(code)
    if concept is None:
        raise not_found(f"Code '{code[:64]}' is not in code system {view.url}")
    params: list[dict[str, Any]] = [
        {"name": "name", "valueString": view.name},
        {"name": "version", "valueString": view.version},
        {"name": "display", "valueString": concept.display},
    ]
    if not concept.active:
        params.append({"name": "property", "part": [{"name": "code", "valueCode": "inactive"},
                                                    {"name": "value", "valueBoolean": True}]})
    return {"resourceType": "Parameters", "parameter": params}


def _same_display(given: str, expected: str) -> bool:
    return " ".join(given.split()).casefold() == " ".join(expected.split()).casefold()


def _check_display(coding: CodingIn, display: str) -> str | None:
    if coding.display is not None and not _same_display(coding.display, display):
        return f"Wrong display '{coding.display[:100]}' for code '{coding.code}': it is '{display}'"
    return None


def validate_in_codesystem(view: CodeSystemView, codings: list[CodingIn]) -> dict[str, Any]:
    messages: list[str] = []
    for coding in codings:
        if coding.system is not None and canonical(coding.system) != view.url:
            messages.append(f"System {coding.system[:120]} is not {view.url}")
            continue
        concept = view.find(coding.code)
        if concept is None:
            messages.append(f"Code '{coding.code[:64]}' is not in code system {view.url}")
            continue
        if not concept.active:
            messages.append(f"Code '{coding.code}' of {view.url} is inactive (withdrawn from the list)")
            continue
        problem = _check_display(coding, concept.display)
        if problem:
            return _result(False, problem, concept.display)
        return _result(True, None, concept.display)
    return _result(False, "; ".join(messages), None)


def validate_in_valueset(view: ValueSetView, codings: list[CodingIn]) -> dict[str, Any]:
    messages: list[str] = []
    label = view.url or "the value set"
    for coding in codings:
        system = canonical(coding.system) if coding.system is not None else None
        system = view.system_aliases.get(system, system) if system is not None else None
        entry = view.expansion.find(system, coding.code)
        if entry is None:
            where = f"{system}#" if system else ""
            messages.append(f"Code '{where}{coding.code[:64]}' is not in value set {label}")
            continue
        display = entry.get("display", "")
        problem = _check_display(coding, display) if display else None
        if problem:
            return _result(False, problem, display)
        return _result(True, None, display or None)
    return _result(False, "; ".join(messages), None)


def _result(ok: bool, message: str | None, display: str | None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "result", "valueBoolean": ok}]
    if message:
        params.append({"name": "message", "valueString": message})
    if display:
        params.append({"name": "display", "valueString": display})
    return {"resourceType": "Parameters", "parameter": params}


# --- editing a code list through PUT CodeSystem -----------------------------------------------------------------


def concepts_of(resource: dict[str, Any], cs_id: str) -> list[tuple[str, str]]:
    """The (code, display) pairs a PUT CodeSystem carries, after the FHIR-level checks."""
    url = resource.get("url")
    if url is not None and canonical(str(url)) != CS_BASE + cs_id:
        raise invalid(f"url must be {CS_BASE + cs_id}", "CodeSystem.url")
    content = resource.get("content")
    if content != "complete":
        raise invalid("A code list is replaced whole: content must be 'complete'", "CodeSystem.content")
    concepts = resource.get("concept")
    if not isinstance(concepts, list) or not concepts:
        raise invalid("A code list needs at least one concept (codes left out are deactivated)",
                      "CodeSystem.concept")
    out: list[tuple[str, str]] = []
    for i, c in enumerate(concepts):
        if not isinstance(c, dict):
            raise invalid("A concept is an object {code, display}", f"CodeSystem.concept[{i}]")
        if c.get("concept"):
            raise invalid("Code lists are flat: nested concepts are not supported", f"CodeSystem.concept[{i}]")
        if "display" not in c:
            raise invalid(f"Concept '{str(c.get('code'))[:40]}' needs a display", f"CodeSystem.concept[{i}].display")
        out.append((c.get("code"), c.get("display")))  # type: ignore[arg-type]
    return out


def replace_list(conn: Connection, cs_id: str, concepts: list[tuple[str, str]]) -> None:
    try:
        replace_codes(conn, cs_id, concepts)
    except CodeListError as exc:
        where = "CodeSystem.concept" if exc.index is None else f"CodeSystem.concept[{exc.index}]"
        if exc.field:
            where += f".{exc.field}"
        raise invalid(str(exc), where) from None


def is_editable(cs_id: str) -> bool:
    return resolve_id(cs_id) in EDITABLE_LISTS


# --- the validator's live source ----------------------------------------------------------------------------------

_ENGINE: ContextVar[tuple[Engine, dict[str, frozenset[tuple[str, str]]]] | None] = ContextVar(
    "hifhir_terminology_engine", default=None)


def bind_engine(engine: Engine) -> None:
    """Let the profile validator read live code lists through `engine` for the rest of this request."""
    _ENGINE.set((engine, {}))


@functools.cache
def _live_valuesets() -> dict[str, str]:
    """url → id of the IG value sets that include a live list."""
    out = {}
    for vs_id in _ig_files()[1]:
        found = _ig_valueset_definition(vs_id)
        if found is not None and found[1]:
            out[found[0]["url"]] = vs_id
    return out


def _live_codes(url: str) -> frozenset[tuple[str, str]] | None:
    bound = _ENGINE.get()
    if bound is None:
        return None
    engine, memo = bound
    got = memo.get(url)
    if got is None:
        with engine.connect() as conn:
            view = get_valueset(conn, _live_valuesets()[url])
        assert view is not None
        got = view.expansion.pairs()
        if view.id == "group-type":  # IG §9.5: the examples code family types with the core system
            got = got | {(CORE_GROUP_TYPE, c) for _s, c in got}
        memo[url] = got
    return got


register_live_source(frozenset(_live_valuesets()), _live_codes)
