"""OpenIMISPatient ↔ insuree (domain §2.5, §3.1.1)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, false, func, insert, or_, select, update

from hifhir.auth import scope as location_scope
from hifhir.config import PUBLIC_BASE_URL
from hifhir.fhir import patching
from hifhir.fhir.elements import (
    coding,
    ext,
    ext_value,
    extension,
    first_code,
    identifier_value,
    identifiers,
    reference,
    sub_extension,
    telecom_value,
    telecoms,
)
from hifhir.fhir.errors import FhirError, conflict
from hifhir.fhir.kind import ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import (
    address_location_param,
    concept_from_list,
    configured_concept,
    named_location_of_level,
    resolve_new_id,
    uuid_for_update,
    uuid_of,
)
from hifhir.fhir.profiles.location import register_location_user
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    SearchParam,
    SortKey,
    bool_param,
    check_token,
    column_ref,
    date_param,
    normalise_text,
    reference_param,
    split_token,
    string_param,
    subquery_string_param,
    token_param,
)
from hifhir.store.fast import DriverQuery, Plan, any_pk, run_plan
from hifhir.store.tables import code_list_entry, family, health_facility, insuree, insuree_photo, is_current, location

GENDERS = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
GENDER_OUT = {v: k for k, v in GENDERS.items()}
MARITAL = {"M": "M", "S": "S", "D": "D", "W": "W", "UNK": "N"}
MARITAL_OUT = {"M": ("M", "Married"), "S": ("S", "Never Married"), "D": ("D", "Divorced"),
               "W": ("W", "Widowed"), "N": ("UNK", "unknown")}
MARITAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
PUBLIC_BASE = PUBLIC_BASE_URL


def _village_match(match: Any, level_col: str | None) -> Any:
    """Insurees whose village (or the village's ancestor at `level_col`) matches a name."""
    if level_col is None:
        return select(location.c.pk).where(match(location.c.name_norm))
    named = select(location.c.pk).where(match(location.c.name_norm))
    return select(location.c.pk).where(location.c[level_col].in_(named))


def _birth_date(value: str) -> date:
    """openIMIS stores a full date of birth; FHIR also allows YYYY and YYYY-MM, which cannot round-trip."""
    require(len(value) == 10, f"birthDate must be a full date (YYYY-MM-DD), not '{value[:20]}'",
            "Patient.birthDate")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FhirError.one(400, "value", f"birthDate '{value}' is not a calendar date",
                            expression="Patient.birthDate") from None


def _telecom_param() -> SearchParam:
    """`telecom`: the system part (ContactPoint.system) selects the column; none (or `|`) means either."""
    columns = {"phone": insuree.c.phone, "email": insuree.c.email}

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        if system:
            return columns[system] == code if system in columns else false()
        return or_(*[c == code for c in columns.values()])

    return SearchParam("telecom", "token", clause, frozenset(), "Phone number or e-mail (system phone|email)",
                       lambda missing: and_(*[c.is_(None) for c in columns.values()]) if missing
                       else or_(*[c.is_not(None) for c in columns.values()]))


# The render query is built once (aliases and statement construction cost more than running it).
_LABEL_LISTS = {  # code list → the insuree column holding its code
    "patient-education-level": insuree.c.education,
    "patient-profession": insuree.c.profession,
    "patient-identification-type": insuree.c.id_type,
    "patient-contact-relationship": insuree.c.relationship,
}


def _render_statement() -> Any:
    """Everything a Patient shows, in one query: family and head, first service point, photo, the village and
    its ancestors' names, and the displays of its coded fields (a create is then one read-back, not three).

    The ancestors' names and the displays are scalar subqueries, not joins: PostgreSQL plans a statement anew for
    each connection and variant (`store.fast._MAX_PK_SLOTS`), and with them as joins the 13 tables took ~3 ms to
    plan, with them as subqueries 6 tables ~1.3 ms; each runs as the same one-row index probe either way."""
    head, fsp, village = insuree.alias("head"), health_facility.alias("fsp"), location.alias("village")

    def name_of(location_pk: Any, alias: str) -> Any:
        place = location.alias(alias)
        return select(place.c.name).where(place.c.pk == location_pk).scalar_subquery()

    def display_of(list_name: str, code: Any, alias: str) -> Any:
        entry = code_list_entry.alias(alias)
        return (select(entry.c.display).where(entry.c.list_name == list_name, entry.c.code == code)
                .scalar_subquery())

    joined = (
        insuree.outerjoin(family, family.c.pk == insuree.c.family_pk)
        .outerjoin(head, head.c.pk == family.c.head_insuree_pk)
        .outerjoin(fsp, fsp.c.pk == insuree.c.hf_pk)
        .outerjoin(insuree_photo, insuree_photo.c.insuree_pk == insuree.c.pk)
        .outerjoin(village, village.c.pk == insuree.c.village_pk)
    )
    return (
        select(insuree, family.c.id.label("family_id"), head.c.last_name.label("head_last"),
               head.c.other_names.label("head_other"), fsp.c.id.label("hf_id"),
               insuree_photo.c.content_type.label("photo_type"), insuree_photo.c.title.label("photo_title"),
               insuree_photo.c.creation.label("photo_creation"), insuree_photo.c.hash.label("photo_hash"),
               func.length(insuree_photo.c.data).label("photo_size"),
               village.c.id.label("village_id"), village.c.name.label("village_name"),
               name_of(village.c.ward_pk, "ward").label("ward_name"),
               name_of(village.c.district_pk, "district").label("district_name"),
               name_of(village.c.region_pk, "region").label("region_name"),
               *[display_of(name, column, f"label{i}").label(f"label_{i}")
                 for i, (name, column) in enumerate(_LABEL_LISTS.items())])
        .select_from(joined)
        .where(any_pk(insuree.c.pk))
    )


# Run by every write that re-versions insurees (a payment that activates a family's policy re-renders them all).
_RENDER = DriverQuery(_render_statement())


@dataclass(frozen=True, slots=True)
class _Place:
    id: str
    name: str
    ward: str | None
    district: str | None
    region: str | None


@dataclass(frozen=True, slots=True)
class _PatientIn:
    """A Patient's columns as `PatientKind._parse` read them from the resource, with what a render needs besides:
    the village's names (None when the address did not name it by id) and the displays of the codes."""

    values: dict[str, Any]
    village: _Place | None
    labels: dict[str, dict[str, str]]


_Coded = Callable[[str, "dict[str, Any] | None", str], "str | None"]  # (list, concept, expression) → code


def _new_row(pk: int, values: dict[str, Any]) -> Any:
    """An insuree just inserted, as the render query would read it back: the written columns, the defaults of the
    others `_to_fhir` reads, and no family, first service point or photo (the writes that have one render)."""
    return SimpleNamespace(pk=pk, **values, has_active_policy=False, family_id=None, head_last=None,
                           head_other=None, hf_id=None, photo_type=None)


class PatientKind(ResourceKind):
    resource_type = "Patient"
    name = "patient"
    profile_id = "openimis-patient"
    table = insuree
    scope = location_scope.PATIENT
    code_column = "chf_id"
    patchable = frozenset({"has_active_policy"})  # Patient.active, flipped by every policy (de)activation

    def __init__(self) -> None:
        t = insuree
        self.search_params = {
            **common_params(self),
            "family": string_param("family", t.c.family_norm, raw_columns=(t.c.last_name,), doc="Last name"),
            # other_names may hold several names separated by spaces (rendered as the one given the profile
            # allows): each name matches on its own, as it would in a HumanName.given list.
            "given": string_param("given", t.c.given_norm, raw_columns=(t.c.other_names,),
                                  word_columns=(t.c.given_norm, t.c.other_names), doc="Other names"),
            "name": string_param("name", t.c.family_norm, t.c.given_norm,
                                 raw_columns=(t.c.last_name, t.c.other_names),
                                 word_columns=(t.c.given_norm, t.c.other_names), doc="Last or other names"),
            "birthdate": date_param("birthdate", t.c.dob, doc="Date of birth"),
            "gender": token_param("gender", t.c.gender, codes=GENDERS,
                                  systems=frozenset({"http://hl7.org/fhir/administrative-gender"})),
            "phone": token_param("phone", t.c.phone, systems=frozenset({"phone"})),
            "email": token_param("email", t.c.email, systems=frozenset({"email"})),
            "telecom": _telecom_param(),
            "active": bool_param("active", t.c.has_active_policy, doc="Has an active policy"),
            "group": reference_param("group", "Group", column_ref(t.c.family_pk, "group"), doc="The family (Group)"),
            "general-practitioner": reference_param(
                "general-practitioner", "Organization", column_ref(t.c.hf_pk, "health-facility"),
                doc="First point of service"),
            "address-location": address_location_param(t.c.village_pk),
            "address-city": subquery_string_param("address-city", t.c.village_pk,
                                                  lambda m: _village_match(m, None), doc="Village name"),
            "address-district": subquery_string_param("address-district", t.c.village_pk,
                                                      lambda m: _village_match(m, "district_pk"),
                                                      doc="District name"),
            "address-state": subquery_string_param("address-state", t.c.village_pk,
                                                   lambda m: _village_match(m, "region_pk"),
                                                   doc="Region name"),
            "address-municipality": subquery_string_param("address-municipality", t.c.village_pk,
                                                          lambda m: _village_match(m, "ward_pk"),
                                                          doc="Ward / municipality name"),
            "address": subquery_string_param(
                "address", t.c.village_pk,
                lambda m: select(location.c.pk).where(or_(
                    location.c.pk.in_(_village_match(m, None)),
                    location.c.pk.in_(_village_match(m, "ward_pk")),
                    location.c.pk.in_(_village_match(m, "district_pk")),
                    location.c.pk.in_(_village_match(m, "region_pk")))),
                doc="Any part of the address: village, ward, district or region name"),
        }
        self.sort_params = {
            **common_sorts(self),
            "family": SortKey(t.c.family_norm),
            "given": SortKey(t.c.given_norm),
            "name": SortKey(t.c.family_norm),
            "birthdate": SortKey(t.c.dob, "date"),
            "gender": SortKey(t.c.gender),
        }

    # --- to FHIR ---------------------------------------------------------------------------------------

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return run_plan(conn, self.render_plan(conn, pks))

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        rows, = yield [(_RENDER, {"pks": pks})]
        places: dict[int, Any] = {}
        labels: dict[str, dict[str, str]] = {name: {} for name in _LABEL_LISTS}
        for row in rows:
            if row.village_id is not None:
                places[row.village_pk] = _Place(row.village_id, row.village_name, row.ward_name,
                                                row.district_name, row.region_name)
            for i, (name, column) in enumerate(_LABEL_LISTS.items()):
                display = row._mapping[f"label_{i}"]
                if display is not None:
                    labels[name][row._mapping[column.name]] = display
        return {row.pk: self._to_fhir(row, places, labels) for row in rows}

    def patch_body(self, body: dict[str, Any], change: Mapping[str, Any]) -> bool:
        body["active"] = bool(change["has_active_policy"])
        return True

    def _to_fhir(self, row: Row, places: dict[int, Any], labels: dict[str, dict[str, str]]) -> dict[str, Any]:
        exts: list[dict[str, Any]] = [ext("patient-is-head", "valueBoolean", bool(row.is_head))]
        for list_name, col in (("patient-education-level", row.education),
                               ("patient-profession", row.profession)):
            concept = concept_from_list(list_name, col, labels[list_name])
            if concept:
                exts.append(ext(list_name, "valueCodeableConcept", concept))
        if row.id_number:
            parts: list[dict[str, Any]] = [{"url": "number", "valueString": row.id_number}]
            id_type = concept_from_list("patient-identification-type", row.id_type,
                                        labels["patient-identification-type"])
            if id_type:
                parts.append({"url": "type", "valueCodeableConcept": id_type})
            exts.append({"extension": parts, "url": ext("patient-identification", "x", None)["url"]})
        exts.append(ext("patient-card-issued", "valueBoolean", bool(row.card_issued)))
        if row.family_id:
            exts.append(ext("patient-group-reference", "valueReference", reference("Group", row.family_id)))
        if row.vulnerability is not None:
            exts.append(ext("patient-vulnerability-status", "valueBoolean", bool(row.vulnerability)))
        res: dict[str, Any] = {
            "extension": exts,
            "identifier": identifiers(row.chf_id, uuid_of(row)),
            "active": bool(row.has_active_policy),
            # The profile allows one given (1..1): the other names come back as they were stored, one string.
            "name": [{"use": "official", "family": row.last_name, "given": [row.other_names]}],
        }
        tel = telecoms(phone=row.phone, email=row.email)
        if tel:
            res["telecom"] = tel
        res["gender"] = GENDER_OUT.get(row.gender, "unknown")
        res["birthDate"] = row.dob.isoformat()
        if row.village_pk in places:
            place = places[row.village_pk]
            address: dict[str, Any] = {
                "extension": [
                    ext("address-municipality", "valueString", place.ward),
                    ext("address-location-reference", "valueReference", reference("Location", place.id)),
                ],
                "use": row.address_use,
                "type": "physical",
            }
            if row.address_line:
                address["line"] = [row.address_line]
            address.update({"city": place.name, "district": place.district, "state": place.region})
            res["address"] = [address]
        if row.marital:
            code, display = MARITAL_OUT[row.marital]
            res["maritalStatus"] = {"coding": [coding(MARITAL_SYSTEM, code, display)]}
        if row.photo_type:
            res["photo"] = [{"contentType": row.photo_type, "url": f"{PUBLIC_BASE}/Patient/{row.id}/$photo",
                             "size": row.photo_size, "title": row.photo_title, "creation": row.photo_creation,
                             **({"hash": row.photo_hash} if row.photo_hash else {})}]
        if row.relationship and row.head_last is not None:
            rel = concept_from_list("patient-contact-relationship", row.relationship,
                                    labels["patient-contact-relationship"])
            res["contact"] = [{"relationship": [rel],
                               "name": {"family": row.head_last, "given": [row.head_other]}}]
        if row.hf_id:
            res["generalPractitioner"] = [reference("Organization", row.hf_id)]
        return res

    # --- from FHIR -------------------------------------------------------------------------------------

    # A create's reads (its village and codes) run before SQLite's writer lock; the uniqueness of the insurance
    # number is the unique index's to enforce, and the family's head is read in the write transaction.
    reads_ahead = True

    def read_ahead(self, ctx: WriteContext, resource: dict[str, Any]) -> _PatientIn:
        return self._parse(ctx, resource)

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        data = ctx.read_ahead if current is None and isinstance(ctx.read_ahead, _PatientIn) \
            else self._parse(ctx, resource)
        values = dict(data.values)
        ctx.expect_unique(insuree, "chf_id", values["chf_id"], "Insurance number", "Patient.identifier")
        family_pk = self._family(ctx, resource, current, values["is_head"])
        values["family_pk"] = family_pk

        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, insuree)
            pk = ctx.insert(insuree, values)
            if family_pk is None and values["hf_pk"] is None and not resource.get("photo") and data.village:
                # Nothing of the new insuree's but what this write knows: its render, without reading it back.
                body = self._to_fhir(_new_row(pk, values), {values["village_pk"]: data.village}, data.labels)
                patching.check_built(self, ctx.conn, pk, body)
                ctx.prerendered[(self.name, pk)] = body
        else:
            pk = int(current.pk)
            if current.is_head and current.family_pk is not None and family_pk != current.family_pk:
                raise conflict("This insuree heads a family: appoint another head or delete the family first",
                               "Patient.extension[group]")
            if current.is_head and current.family_pk == family_pk and not values["is_head"]:
                raise conflict("A family needs a head: make another member head through the Group first",
                               "Patient.extension[isHead]")
            values["uuid"] = uuid_for_update(ctx, resource, insuree, current)
            ctx.update(insuree, pk, values)
            if current.family_pk is not None:
                ctx.mark("group", current.family_pk)  # member list, quantity or head name may have changed
        if family_pk is not None:
            ctx.mark("group", family_pk)
            if current is not None and family_pk == current.family_pk and current.is_head:
                self._mark_family_members(ctx, family_pk)  # the head's name shows in members' contact
        self._photo(ctx, resource, pk)
        return pk

    def _parse(self, ctx: WriteContext, resource: dict[str, Any]) -> _PatientIn:
        """The insuree's columns from the resource (but its family, id and uuid), with the reads and checks they
        need, and what a render needs besides: the village's names and the codes' displays."""
        chf_id = identifier_value(resource, "Code")
        require(bool(chf_id) and len(chf_id) <= 12,
                "The insurance number (identifier Code) is required, at most 12 characters",
                "Patient.identifier")
        name = (resource.get("name") or [{}])[0]
        last_name = name.get("family") or ""
        other_names = " ".join(name.get("given") or [])
        require(0 < len(last_name) <= 100, "name.family is required (at most 100 characters)",
                "Patient.name[0].family")
        require(0 < len(other_names) <= 100, "name.given is required (at most 100 characters)",
                "Patient.name[0].given")
        dob = _birth_date(resource["birthDate"])
        require(dob <= date.today(), "birthDate cannot be in the future", "Patient.birthDate")
        labels: dict[str, dict[str, str]] = {name: {} for name in _LABEL_LISTS}

        def coded(list_name: str, concept: dict[str, Any] | None, expression: str) -> str | None:
            found = configured_concept(ctx, list_name, concept, expression)
            if found is None:
                return None
            labels[list_name][found[0]] = found[1]
            return found[0]

        values: dict[str, Any] = {
            "chf_id": chf_id, "last_name": last_name, "other_names": other_names,
            "family_norm": normalise_text(last_name), "given_norm": normalise_text(other_names),
            "dob": dob, "gender": GENDERS[resource["gender"]],
            "phone": telecom_value(resource, "phone"), "email": telecom_value(resource, "email"),
            "marital": MARITAL.get(first_code(resource.get("maritalStatus")) or ""),
            "is_head": bool(ext_value(resource, "patient-is-head", "valueBoolean")),
            "card_issued": bool(ext_value(resource, "patient-card-issued", "valueBoolean")),
            "vulnerability": ext_value(resource, "patient-vulnerability-status", "valueBoolean"),
            "education": coded("patient-education-level",
                               ext_value(resource, "patient-education-level", "valueCodeableConcept"),
                               "Patient.extension[educationLevel]"),
            "profession": coded("patient-profession",
                                ext_value(resource, "patient-profession", "valueCodeableConcept"),
                                "Patient.extension[profession]"),
        }
        values.update(self._identification(resource, coded))
        address, village = self._address(ctx, resource)
        values.update(address)
        values["relationship"] = self._relationship(resource, coded)
        values["hf_pk"] = self._first_service_point(ctx, resource)
        for key, limit in (("phone", 50), ("email", 100), ("address_line", 200)):
            require(values[key] is None or len(values[key]) <= limit, f"{key} is at most {limit} characters",
                    "Patient")
        return _PatientIn(values, village, labels)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        if current.family_pk is not None:
            require(not current.is_head,
                    "This insuree heads a family: delete the family or appoint another head first")
            ctx.conn.execute(update(insuree).where(insuree.c.pk == current.pk).values(family_pk=None))
            ctx.mark("group", current.family_pk)

    # --- pieces ----------------------------------------------------------------------------------------

    @staticmethod
    def _identification(resource: dict[str, Any], coded: _Coded) -> dict[str, Any]:
        ident = extension(resource, "patient-identification")
        if ident is None:
            return {"id_number": None, "id_type": None}
        number = (sub_extension(ident, "number") or {}).get("valueString")
        type_ext = sub_extension(ident, "type")
        id_type = coded("patient-identification-type", type_ext.get("valueCodeableConcept") if type_ext else None,
                        "Patient.extension[identification].extension[type]")
        require(number is None or len(number) <= 25, "Identification number is at most 25 characters",
                "Patient.extension[identification]")
        return {"id_number": number, "id_type": id_type}

    @staticmethod
    def _address(ctx: WriteContext, resource: dict[str, Any]) -> tuple[dict[str, Any], _Place | None]:
        addresses = resource.get("address") or []
        require(len(addresses) == 1, "Exactly one address (family 'home' or the insuree's own 'temp')",
                "Patient.address")
        address = addresses[0]
        loc = extension(address, "address-location-reference")
        require(loc is not None, "The address needs the village (extension address-location-reference)",
                "Patient.address[0].extension")
        village_pk, named = named_location_of_level(ctx, loc.get("valueReference"), "V",
                                                    "Patient.address[0].extension[location]")
        line = " ".join(address.get("line") or []) or None
        village = None if named is None else _Place(named.id, named.name, named.ward, named.district, named.region)
        return {"village_pk": village_pk, "address_line": line,
                "address_use": "temp" if address.get("use") == "temp" else "home"}, village

    @staticmethod
    def _relationship(resource: dict[str, Any], coded: _Coded) -> str | None:
        contacts = resource.get("contact") or []
        if not contacts:
            return None
        relationships = contacts[0].get("relationship") or []
        return coded("patient-contact-relationship", relationships[0] if relationships else None,
                     "Patient.contact[0].relationship")

    @staticmethod
    def _first_service_point(ctx: WriteContext, resource: dict[str, Any]) -> int | None:
        gps = resource.get("generalPractitioner") or []
        require(len(gps) <= 1, "At most one first point of service", "Patient.generalPractitioner")
        if not gps:
            return None
        _, pk = ctx.resolve(gps[0], ["Organization"], "Patient.generalPractitioner[0]",
                            kinds=["health-facility"])
        return pk

    @staticmethod
    def _family(ctx: WriteContext, resource: dict[str, Any], current: Row | None,
                is_head: bool) -> int | None:
        group_ref = ext_value(resource, "patient-group-reference", "valueReference")
        if group_ref is None:
            return None
        _, family_pk = ctx.resolve(group_ref, ["Group"], "Patient.extension[group]")
        head_pk = ctx.conn.execute(select(family.c.head_insuree_pk).where(family.c.pk == family_pk)).scalar()
        if is_head and (current is None or head_pk != current.pk):
            raise conflict("The family already has a head; an insuree joining it cannot be head",
                           "Patient.extension[isHead]")
        return family_pk

    @staticmethod
    def _mark_family_members(ctx: WriteContext, family_pk: int) -> None:
        for (pk,) in ctx.conn.execute(select(insuree.c.pk).where(
                insuree.c.family_pk == family_pk, is_current(insuree),
                insuree.c.relationship.is_not(None))):
            ctx.mark("patient", pk)

    @staticmethod
    def _photo(ctx: WriteContext, resource: dict[str, Any], pk: int) -> None:
        photos = resource.get("photo") or []
        if not photos:
            return
        photo = photos[0]
        if "data" not in photo:
            return  # the URL slice is what GET returns; sending it back keeps the stored photo
        try:
            data = base64.b64decode(photo["data"], validate=True)
        except (binascii.Error, ValueError):
            raise conflict("photo.data is not valid base64", "Patient.photo[0].data") from None
        for key in ("contentType", "title", "creation"):
            require(bool(photo.get(key)), f"photo.{key} is required", f"Patient.photo[0].{key}")
        ctx.conn.execute(delete(insuree_photo).where(insuree_photo.c.insuree_pk == pk))
        ctx.conn.execute(insert(insuree_photo).values(
            insuree_pk=pk, content_type=photo["contentType"][:100], title=photo["title"][:250],
            creation=photo["creation"][:40], hash=(photo.get("hash") or None), data=data))


register_location_user("patient", insuree, "village_pk", "chf_id", "insuree")


def load_photo(conn: Connection, res_id: str) -> tuple[str, bytes] | None:
    row = conn.execute(
        select(insuree_photo.c.content_type, insuree_photo.c.data)
        .select_from(insuree_photo.join(insuree, insuree.c.pk == insuree_photo.c.insuree_pk))
        .where(insuree.c.id == res_id, is_current(insuree))
    ).first()
    return None if row is None else (row.content_type, bytes(row.data))
