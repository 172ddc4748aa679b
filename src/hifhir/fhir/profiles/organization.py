"""The three Organization profiles (IG §1b rows 4–6; domain §2.2, §2.9).

* `prov` — OpenIMISHealthFacilityOrganization ↔ `health_facility`; its address points at a **district**.
* `bus`  — OpenIMISPolicyHolderOrganization ↔ `policy_holder`; its address points at a **village**.
* `ins`  — OpenIMISInsuranceOrganization ↔ `insurer_org`: the scheme itself, one row synchronised from
  configuration by `sync_insurer` (read-only through the API).

Address parts (state, district, municipality, city) are never stored: they are the names of the referenced
location and its ancestors, rendered at write time and re-rendered when a location is renamed or moved (the
hooks registered at the bottom of this module). Names a client sends in those parts are not checked: the
location reference is the authoritative link, and names drift (renames, stale client caches).

A health facility's `contact` (GET only) lists its claim administrators: those with a current claim administrator
PractitionerRole there (purpose PAYOR, their name). The practitioner modules re-version the facility when such a
role is created, moved, deleted or restored, or when the administrator is renamed; a sent `contact` is ignored.
A facility cannot be deleted while a current claim administrator role names it.

Defaults for the NOT NULL openIMIS columns the IG leaves optional (health facility):
* legal form (`organization-hf-legal-form` 0..1): `G` Government on create — the demo and most
  deployments register public facilities; on update an absent extension keeps the stored form.
* level (`organization-hf-level` 0..1): **not** required, because the IG's own example
  (RaptaDistrictHospital) has none and must round-trip. On create an absent level is stored as `''`
  ("not recorded", the reference module likewise omits the extension for an empty level) and is rendered as
  no extension; on update an absent extension keeps the stored level, so a client that ignores the
  extension cannot wipe it. Level-driven rules (hospital ceilings, capitation) treat `''` as "not H/C/D".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row, Select, Table, bindparam, false, insert, not_, or_, select, true, update

from hifhir.auth import scope as location_scope
from hifhir.config import InsurerConfig
from hifhir.fhir.elements import (
    coding,
    ext,
    ext_value,
    first_code,
    identifier_value,
    identifiers,
    reference,
    telecom_value,
    telecoms,
)
from hifhir.fhir.errors import FhirError, conflict, invalid
from hifhir.fhir.kind import ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import (
    address_location_param,
    check_unique_code,
    concept_from_list,
    configured_code,
    is_uuid,
    location_names,
    location_of_level,
    resolve_new_id,
    uuid_of,
)
from hifhir.fhir.profiles.location import register_location_user
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    SearchParam,
    SortKey,
    check_string,
    check_token,
    normalise_text,
    split_token,
    string_param,
    subquery_string_param,
    token_param,
)
from hifhir.store.codelists import displays_of, ig_concepts
from hifhir.store.fast import DriverQuery
from hifhir.store.tables import (
    claim_admin,
    claim_admin_role,
    health_facility,
    insurer_org,
    is_current,
    location,
    policy_holder,
)

ORG_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"
CONTACT_PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/contactentity-type"
HF_CARE_TYPES = ("I", "O", "B")
HF_DEFAULT_LEGAL_FORM = "G"
HF_LEVEL_NOT_RECORDED = ""

LOCATION_EXT = "address-location-reference"
MUNICIPALITY_EXT = "address-municipality"


# --- reading helpers ---------------------------------------------------------------------------------------


def org_type_codes(resource: dict[str, Any]) -> set[str]:
    """Every `type[*].coding[*].code`; tolerant of malformed input: accepts() runs before validation."""
    codes: set[str] = set()
    types = resource.get("type")
    if not isinstance(types, list):
        return codes
    for concept in types:
        if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
            continue
        for c in concept["coding"]:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                codes.add(c["code"])
    return codes


def _the_address(resource: dict[str, Any]) -> dict[str, Any]:
    addresses = resource.get("address") or []
    require(bool(addresses) and isinstance(addresses[0], dict), "An address is required",
            "Organization.address")
    return addresses[0]


def _line(address: dict[str, Any]) -> str | None:
    lines = address.get("line") or []
    return lines[0] if lines else None


def _checked_length(value: str | None, limit: int, what: str, expression: str) -> str | None:
    require(value is None or len(value) <= limit, f"{what} is at most {limit} characters", expression)
    return value


def _code_and_name(resource: dict[str, Any], code_max: int, name_max: int, what: str) -> tuple[str, str]:
    code = identifier_value(resource, "Code")
    require(bool(code) and len(code or "") <= code_max,
            f"{what} code (identifier Code) is required, at most {code_max} characters",
            "Organization.identifier")
    name = resource.get("name") or ""
    require(0 < len(name) <= name_max, f"name is required, at most {name_max} characters",
            "Organization.name")
    return str(code), name


def _norm(value: str, limit: int) -> str:
    # casefold() can lengthen text (ß → ss); the *_norm columns have the raw column's length.
    return normalise_text(value)[:limit]


def _uuid_for_update(ctx: WriteContext, resource: dict[str, Any], table: Table, current: Row) -> str | None:
    """identifier[UUID] on update: kept when absent; a changed value must be a free UUID."""
    value = identifier_value(resource, "UUID")
    if value is None or value == current.uuid:
        return current.uuid
    require(is_uuid(value), "identifier[UUID] must be a UUID", "Organization.identifier")
    taken = ctx.conn.execute(select(table.c.pk).where(
        ((table.c.uuid == value) | (table.c.id == value)) & (table.c.pk != current.pk))).first()
    if taken is not None:
        raise conflict(f"identifier[UUID] {value} is already used", "Organization.identifier")
    return value


def _read_code(ctx: WriteContext, resource: dict[str, Any], list_name: str, slice_name: str) -> str | None:
    """The code of the extension named like its code list, checked against the configured list."""
    concept = ext_value(resource, list_name, "valueCodeableConcept")
    return configured_code(ctx, list_name, concept, f"Organization.extension[{slice_name}]")


def _coded_ext(list_name: str, code: str, labels: dict[str, str]) -> dict[str, Any]:
    """The extensions of these profiles are named like the CodeSystem they draw from."""
    return ext(list_name, "valueCodeableConcept", concept_from_list(list_name, code, labels))


def _type_concept(code: str) -> list[dict[str, Any]]:
    return [{"coding": [coding(ORG_TYPE_SYSTEM, code)]}]


def _telecom_list(row: Row) -> list[dict[str, Any]]:
    return telecoms(email=row.email, phone=row.phone, fax=row.fax)


# --- search helpers ----------------------------------------------------------------------------------------


def org_type_param(own_code: str) -> SearchParam:
    """`type` for one kind: a constant clause, true only for the kind's own organization-type code."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        match = (system in (None, "", ORG_TYPE_SYSTEM)) and code == own_code
        if modifier == "not":
            match = not match
        return true() if match else false()

    return SearchParam("type", "token", clause, frozenset({"not"}),
                       "Organization type: prov (health facility), bus (policy holder), ins (insurer)")


def active_param(status_column: Any | None) -> SearchParam:
    """`active`: a health facility is active when its openIMIS status is AC; the other kinds have no
    status, so they are always active (keeps `Organization?active=true` from dropping them)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        _system, code = split_token(value, expression)
        if code not in ("true", "false"):
            raise invalid(f"'{expression}' takes true or false", expression)
        wanted = (code == "true") != (modifier == "not")
        if status_column is None:
            return true() if wanted else false()
        return status_column == "AC" if wanted else not_(status_column == "AC")

    return SearchParam("active", "token", clause, frozenset({"not"}),
                       "Active organizations (health facility status AC)")


def _named_locations(match: Callable[[Any], Clause]) -> Select[Any]:
    return select(location.c.pk).where(match(location.c.name_norm))


def location_part_param(name: str, column: Any, part: str | None, doc: str) -> SearchParam:
    """A string on one address part: `part` is the location's own name (None) or an ancestor column."""

    def subquery(match: Callable[[Any], Clause]) -> Select[Any]:
        if part is None:
            return _named_locations(match)
        return select(location.c.pk).where(location.c[part].in_(_named_locations(match)))

    return subquery_string_param(name, column, subquery, doc)


def address_param(location_column: Any, line_column: Any) -> SearchParam:
    """`address`: any location name on the address (own or ancestor) or the start of the address line."""

    def subquery(match: Callable[[Any], Clause]) -> Select[Any]:
        named = _named_locations(match)
        return select(location.c.pk).where(or_(
            match(location.c.name_norm),
            location.c.region_pk.in_(named),
            location.c.district_pk.in_(named),
            location.c.ward_pk.in_(named),
        ))

    by_location = subquery_string_param("address", location_column, subquery)

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        check_string(value, expression)
        # The line is stored raw (no *_norm column): ILIKE folds ASCII case on SQLite, all case on PostgreSQL.
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%" if modifier == "contains" else f"{escaped}%"
        line_match = line_column == value if modifier == "exact" else line_column.ilike(pattern, escape="\\")
        return or_(by_location.clause(value, modifier, expression), line_match)

    return SearchParam("address", "string", clause, frozenset({"exact", "contains"}),
                       "Any part of the address: location names or the address line")


# --- health facility ---------------------------------------------------------------------------------------

# The facility's claim administrators (Organization.contact, GET only): those with a current role there.
_HF_CONTACTS = (
    select(claim_admin_role.c.hf_pk, claim_admin.c.pk, claim_admin.c.last_name, claim_admin.c.other_names)
    .select_from(claim_admin_role.join(claim_admin, claim_admin.c.pk == claim_admin_role.c.claim_admin_pk))
    .where(claim_admin_role.c.hf_pk.in_(bindparam("pks", expanding=True)), is_current(claim_admin_role),
           is_current(claim_admin))
    .order_by(claim_admin_role.c.hf_pk, claim_admin.c.code, claim_admin.c.pk)
)


def _hf_contacts(conn: Connection, pks: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    seen: set[tuple[int, int]] = set()
    for hf_pk, ca_pk, last_name, other_names in conn.execute(_HF_CONTACTS, {"pks": pks}):
        if (hf_pk, ca_pk) in seen:
            continue
        seen.add((hf_pk, ca_pk))
        out.setdefault(hf_pk, []).append({
            "purpose": {"coding": [coding(CONTACT_PURPOSE_SYSTEM, "PAYOR", "Payor")]},
            "name": {"use": "official", "family": last_name, "given": [other_names]},
        })
    return out


class HealthFacilityKind(ResourceKind):
    resource_type = "Organization"
    name = "health-facility"
    profile_id = "openimis-health-facility-organization"
    table = health_facility
    scope = location_scope.HEALTH_FACILITY

    def __init__(self) -> None:
        t = health_facility
        self.search_params = {
            **common_params(self),
            "name": string_param("name", t.c.name_norm, raw_columns=(t.c.name,), doc="Health facility name"),
            "type": org_type_param("prov"),
            "active": active_param(t.c.status),
            "address": address_param(t.c.location_pk, t.c.address),
            "address-location": address_location_param(t.c.location_pk),
            "address-state": location_part_param("address-state", t.c.location_pk, "region_pk",
                                                 "Region name"),
            "address-district": location_part_param("address-district", t.c.location_pk, None,
                                                    "District name"),
            "phone": token_param("phone", t.c.phone, doc="Phone number"),
            "email": token_param("email", t.c.email, doc="Email address"),
        }
        self.sort_params = {**common_sorts(self), "name": SortKey(t.c.name_norm)}

    def accepts(self, resource: dict[str, Any]) -> bool:
        return "prov" in org_type_codes(resource)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        rows = conn.execute(select(health_facility).where(health_facility.c.pk.in_(pks))).all()
        places = location_names(conn, {row.location_pk for row in rows})
        labels = displays_of(conn, ("organization-hf-legal-form", "organization-hf-level"))
        legal_labels, level_labels = labels["organization-hf-legal-form"], labels["organization-hf-level"]
        care_labels = dict(ig_concepts("organization-hf-care-type"))
        contacts = _hf_contacts(conn, pks)
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            extensions = [_coded_ext("organization-hf-legal-form", row.legal_form, legal_labels)]
            if row.level:
                extensions.append(_coded_ext("organization-hf-level", row.level, level_labels))
            extensions.append(_coded_ext("organization-hf-care-type", row.care_type, care_labels))
            district = places[row.location_pk]
            address: dict[str, Any] = {
                "extension": [ext(LOCATION_EXT, "valueReference", reference("Location", district.id))],
                "type": "physical",
            }
            if row.address:
                address["line"] = [row.address]
            address["district"] = district.name
            if district.region is not None:
                address["state"] = district.region
            res: dict[str, Any] = {
                "extension": extensions,
                "identifier": identifiers(row.code, uuid_of(row)),
                "type": _type_concept("prov"),
                "name": row.name,
            }
            if tel := _telecom_list(row):
                res["telecom"] = tel
            res["address"] = [address]
            if row.pk in contacts:
                res["contact"] = contacts[row.pk]
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        conn = ctx.conn
        code, name = _code_and_name(resource, 8, 100, "Health facility")
        check_unique_code(conn, health_facility, "code", code, current, "Health facility code",
                          "Organization.identifier")
        address = _the_address(resource)
        loc_ref = ext_value(address, LOCATION_EXT, "valueReference")
        expr = "Organization.address[0].extension[locationDistrict]"
        require(loc_ref is not None, "The address needs the district (address-location-reference)", expr)
        location_pk = location_of_level(ctx, loc_ref, "D", expr)

        care_type = first_code(ext_value(resource, "organization-hf-care-type", "valueCodeableConcept"))
        require(care_type in HF_CARE_TYPES, "The care type (organization-hf-care-type) is required: I/O/B",
                "Organization.extension[careType]")
        legal_form = _read_code(ctx, resource, "organization-hf-legal-form", "legalForm")
        level = _read_code(ctx, resource, "organization-hf-level", "hfLevel")
        # See the module docstring: defaults on create, keep the stored value on update.
        if legal_form is None:
            legal_form = current.legal_form if current is not None else HF_DEFAULT_LEGAL_FORM
        if level is None:
            level = current.level if current is not None else HF_LEVEL_NOT_RECORDED

        values: dict[str, Any] = {
            "code": code,
            "name": name,
            "name_norm": _norm(name, 100),
            "legal_form": legal_form,
            "level": level,
            "care_type": care_type,
            "location_pk": location_pk,
            "address": _checked_length(_line(address), 100, "address.line", "Organization.address[0].line"),
            "email": _checked_length(telecom_value(resource, "email"), 50, "email", "Organization.telecom"),
            "phone": _checked_length(telecom_value(resource, "phone"), 50, "phone", "Organization.telecom"),
            "fax": _checked_length(telecom_value(resource, "fax"), 50, "fax", "Organization.telecom"),
        }
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, health_facility)
            return ctx.insert(health_facility, values)
        values["uuid"] = _uuid_for_update(ctx, resource, health_facility, current)
        ctx.update(health_facility, current.pk, values)
        return int(current.pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        t = claim_admin_role
        role = ctx.conn.execute(select(t.c.code, t.c.id).where(t.c.hf_pk == current.pk, is_current(t))
                                .order_by(t.c.pk).limit(1)).first()
        if role is not None:
            raise conflict(f"Health facility {current.code} still has the claim administrator role {role.code} "
                           f"(PractitionerRole/{role.id}); delete that role first")


# --- policy holder -----------------------------------------------------------------------------------------


class PolicyHolderKind(ResourceKind):
    resource_type = "Organization"
    name = "policy-holder"
    profile_id = "openimis-policy-holder-organization"
    table = policy_holder

    def __init__(self) -> None:
        t = policy_holder
        self.search_params = {
            **common_params(self),
            "name": string_param("name", t.c.name_norm, raw_columns=(t.c.trade_name,),
                                 doc="Trade name of the policy holder"),
            "type": org_type_param("bus"),
            "active": active_param(None),
            "address": address_param(t.c.location_pk, t.c.address),
            "address-location": address_location_param(t.c.location_pk),
            "address-city": location_part_param("address-city", t.c.location_pk, None, "Village name"),
            "address-district": location_part_param("address-district", t.c.location_pk, "district_pk",
                                                    "District name"),
            "address-state": location_part_param("address-state", t.c.location_pk, "region_pk",
                                                 "Region name"),
            "phone": token_param("phone", t.c.phone, doc="Phone number"),
            "email": token_param("email", t.c.email, doc="Email address"),
        }
        self.sort_params = {**common_sorts(self), "name": SortKey(t.c.name_norm)}

    def accepts(self, resource: dict[str, Any]) -> bool:
        return "bus" in org_type_codes(resource)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        rows = conn.execute(select(policy_holder).where(policy_holder.c.pk.in_(pks))).all()
        places = location_names(conn, {row.location_pk for row in rows})
        labels = displays_of(conn, ("organization-ph-legal-form", "organization-ph-activity"))
        legal_labels, activity_labels = labels["organization-ph-legal-form"], labels["organization-ph-activity"]
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            extensions = []
            if row.legal_form:
                extensions.append(_coded_ext("organization-ph-legal-form", row.legal_form, legal_labels))
            if row.activity:
                extensions.append(_coded_ext("organization-ph-activity", row.activity, activity_labels))
            village = places[row.location_pk]
            addr_ext = []
            if village.ward is not None:
                addr_ext.append(ext(MUNICIPALITY_EXT, "valueString", village.ward))
            addr_ext.append(ext(LOCATION_EXT, "valueReference", reference("Location", village.id)))
            address: dict[str, Any] = {"extension": addr_ext}
            if row.address:
                address["line"] = [row.address]
            address["city"] = village.name
            if village.district is not None:
                address["district"] = village.district
            if village.region is not None:
                address["state"] = village.region
            res: dict[str, Any] = {}
            if extensions:
                res["extension"] = extensions
            res["identifier"] = identifiers(row.code, uuid_of(row))
            res["type"] = _type_concept("bus")
            res["name"] = row.trade_name
            if tel := _telecom_list(row):
                res["telecom"] = tel
            res["address"] = [address]
            if row.contact_name:
                res["contact"] = [{"name": {"text": row.contact_name}}]
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        conn = ctx.conn
        code, name = _code_and_name(resource, 32, 255, "Policy holder")
        check_unique_code(conn, policy_holder, "code", code, current, "Policy holder code",
                          "Organization.identifier")
        address = _the_address(resource)
        loc_ref = ext_value(address, LOCATION_EXT, "valueReference")
        expr = "Organization.address[0].extension[location]"
        require(loc_ref is not None, "The address needs the village (address-location-reference)", expr)
        location_pk = location_of_level(ctx, loc_ref, "V", expr)

        contacts = resource.get("contact") or []
        contact_name = ((contacts[0] or {}).get("name") or {}).get("text") if contacts else None
        values: dict[str, Any] = {
            "code": code,
            "trade_name": name,
            "name_norm": _norm(name, 255),
            "legal_form": _read_code(ctx, resource, "organization-ph-legal-form", "legalForm"),
            "activity": _read_code(ctx, resource, "organization-ph-activity", "activity"),
            "location_pk": location_pk,
            "address": _checked_length(_line(address), 255, "address.line", "Organization.address[0].line"),
            "email": _checked_length(telecom_value(resource, "email"), 255, "email", "Organization.telecom"),
            "phone": _checked_length(telecom_value(resource, "phone"), 50, "phone", "Organization.telecom"),
            "fax": _checked_length(telecom_value(resource, "fax"), 50, "fax", "Organization.telecom"),
            "contact_name": _checked_length(contact_name, 255, "contact name", "Organization.contact"),
        }
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, policy_holder)
            return ctx.insert(policy_holder, values)
        values["uuid"] = _uuid_for_update(ctx, resource, policy_holder, current)
        ctx.update(policy_holder, current.pk, values)
        return int(current.pk)


# --- insurer -----------------------------------------------------------------------------------------------


class InsurerKind(ResourceKind):
    resource_type = "Organization"
    name = "insurer"
    profile_id = "openimis-insurance-organization"
    table = insurer_org
    writable = False  # it is configuration (InsurerConfig), changed by sync_insurer only

    def __init__(self) -> None:
        t = insurer_org
        self.search_params = {
            **common_params(self),
            "name": string_param("name", t.c.name_norm, raw_columns=(t.c.name,), doc="Insurer name"),
            "type": org_type_param("ins"),
            "active": active_param(None),
            "phone": token_param("phone", t.c.phone, doc="Phone number"),
            "email": token_param("email", t.c.email, doc="Email address"),
        }
        self.sort_params = {**common_sorts(self), "name": SortKey(t.c.name_norm)}

    def accepts(self, resource: dict[str, Any]) -> bool:
        return "ins" in org_type_codes(resource)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        rows = conn.execute(select(insurer_org).where(insurer_org.c.pk.in_(pks))).all()
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            # The profile allows one identifier, the Code (no UUID slice).
            res: dict[str, Any] = {
                "identifier": identifiers(row.code, None),
                "type": _type_concept("ins"),
                "name": row.name,
            }
            if tel := _telecom_list(row):
                res["telecom"] = tel
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        raise FhirError.one(405, "not-supported", "The insurer Organization is server configuration; it is "
                            "read-only")


_INSURER_TTL_S = 30.0
_insurer_seen: dict[tuple[str, str], float] = {}  # (database, insurer id) → monotonic time it was seen current
_INSURER_BY_ID = DriverQuery(select(insurer_org.c.id).where(insurer_org.c.id == bindparam("id"),
                                                            is_current(insurer_org)))


def is_current_insurer(conn: Connection, insurer_id: str) -> bool:
    """Is `insurer_id` the id of the current insurer? The insurer is server configuration (`sync_insurer` at start,
    which forgets what was seen): a positive answer is remembered for 30 s, so that the enquiries and claims that
    all name it do not each pay a query for it."""
    key = (str(conn.engine.url), insurer_id)
    now = time.monotonic()
    seen = _insurer_seen.get(key)
    if seen is not None and now - seen < _INSURER_TTL_S:
        return True
    if not _INSURER_BY_ID.rows(conn, {"id": insurer_id}):
        return False
    _insurer_seen[key] = now
    return True


def sync_insurer(conn: Connection, cfg: InsurerConfig, user_name: str | None = None) -> None:
    """Make `insurer_org` hold exactly the configured insurer, versioning it like any other write.

    Idempotent: nothing is written when the row already matches. A previous insurer under another id (the
    configured id changed) is logically deleted so that searches keep returning a single insurer.
    """
    _insurer_seen.clear()
    t = insurer_org
    values: dict[str, Any] = {
        "code": cfg.code,
        "name": cfg.name,
        "name_norm": _norm(cfg.name, 255),
        "email": cfg.email,
        "phone": cfg.phone,
        "fax": cfg.fax,
    }
    ctx = WriteContext(conn, user_name)
    kind = InsurerKind()
    row = conn.execute(select(t).where(t.c.id == cfg.id)).first()
    if row is None:
        pk = int(conn.execute(insert(t).values(id=cfg.id, uuid=None, **values)).inserted_primary_key[0])
        ctx.mark(kind.name, pk)
    elif row.deleted or any(row._mapping[k] != v for k, v in values.items()):
        conn.execute(update(t).where(t.c.pk == row.pk).values(deleted=False, **values))
        ctx.mark(kind.name, int(row.pk))
    for old in conn.execute(select(t.c.pk).where(t.c.id != cfg.id, is_current(t))).all():
        ctx.deleted.append((kind, int(old.pk)))
    if ctx.touched or ctx.deleted:
        ctx.flush()


# --- location hooks ----------------------------------------------------------------------------------------
# Deleting a location that a facility or policy holder sits in would leave a dangling address; renaming or
# moving one changes the address parts rendered in their FHIR versions.


register_location_user(HealthFacilityKind.name, health_facility, "location_pk", "code", "health facility")
register_location_user(PolicyHolderKind.name, policy_holder, "location_pk", "code", "policy holder")
