"""The two Practitioner profiles (IG §1b rows 7–8; domain §2.6, §2.7).

* `CA` — OpenIMISClaimAdministratorPractitioner ↔ `claim_admin`: no address.
* `EO` — OpenIMISEnrolmentOfficerPractitioner ↔ `officer`: an optional address whose location is a **district**
  (`address-location-reference`, like health facilities); the state and district names are rendered from it.

The kinds are told apart by `qualification.code` (CA / EO). openIMIS clients send the code lower-case (`ca`,
`eo`), so kind selection ignores case; the profile's pattern still decides whether the resource is valid.

A practitioner cannot be deleted while a current PractitionerRole uses it (as its practitioner or, for an
enrolment officer, as the substitute). Renaming a claim administrator re-renders the health facilities that list
it as a contact (`Organization.contact`, rendered by the health facility kind).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, Row, Table, and_, false, or_, select, true

from hifhir.auth import scope as location_scope
from hifhir.fhir.elements import (
    coding,
    ext,
    ext_value,
    identifier_value,
    identifiers,
    reference,
    telecom_value,
    telecoms,
)
from hifhir.fhir.errors import FhirError, business_rule, conflict
from hifhir.fhir.kind import CS, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import (
    address_location_param,
    location_names,
    location_of_level,
    resolve_new_id,
    uuid_for_update,
)
from hifhir.fhir.profiles.location import register_location_user
from hifhir.fhir.profiles.organization import address_param, location_part_param
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    Clause,
    SearchParam,
    SortKey,
    check_token,
    date_param,
    normalise_text,
    split_token,
    string_param,
    token_param,
)
from hifhir.store.tables import claim_admin, claim_admin_role, is_current, officer, officer_role

QUALIFICATION_SYSTEM = CS + "practitioner-qualification-type"
QUALIFICATIONS = {"CA": "Claim Administrator", "EO": "Enrolment Officer"}
LOCATION_EXT = "address-location-reference"
CODE_MAX = 50  # Django's ClaimAdminCode / Officer.Code (legacy 8)

# What a kind is called in messages (references to the wrong kind, blocked deletes).
KIND_LABELS = {
    "claim-admin": "claim administrator",
    "enrolment-officer": "enrolment officer",
    "claim-admin-role": "claim administrator role",
    "enrolment-officer-role": "enrolment officer role",
    "health-facility": "health facility",
    "policy-holder": "policy holder",
    "insurer": "insurer",
}


# --- shared with the PractitionerRole kinds --------------------------------------------------------------------


def qualification_concept(code: str) -> dict[str, Any]:
    return {"coding": [coding(QUALIFICATION_SYSTEM, code, QUALIFICATIONS[code])]}


def concept_codes(concepts: Any) -> set[str]:
    """Upper-cased codes of a list of CodeableConcepts; tolerant of malformed input (accepts() runs before
    validation)."""
    codes: set[str] = set()
    if not isinstance(concepts, list):
        return codes
    for concept in concepts:
        codings = concept.get("coding") if isinstance(concept, dict) else None
        if not isinstance(codings, list):
            continue
        for c in codings:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                codes.add(c["code"].upper())
    return codes


def constant_code_param(name: str, own_code: str, doc: str) -> SearchParam:
    """A token that is constant per kind (CA or EO): true for the kind's own code only, any case (openIMIS
    clients use `ca` / `eo`)."""

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        match = system in (None, "", QUALIFICATION_SYSTEM) and code.upper() == own_code
        if modifier == "not":
            match = not match
        return true() if match else false()

    return SearchParam(name, "token", clause, frozenset({"not"}), doc)


def telecom_param(phone: Any, email: Any) -> SearchParam:
    """`telecom`: the system part (ContactPoint.system) selects the column; none (or `|`) means either."""
    columns = {"phone": phone, "email": email}

    def clause(value: str, modifier: str | None, expression: str) -> Clause:
        system, code = split_token(value, expression)
        check_token(code, expression)
        if system:
            return columns[system] == code if system in columns else false()
        return or_(phone == code, email == code)

    return SearchParam("telecom", "token", clause, frozenset(), "Phone number or e-mail (system phone|email)",
                       lambda missing: and_(phone.is_(None), email.is_(None)) if missing
                       else or_(phone.is_not(None), email.is_not(None)))


def resolve_kind(ctx: WriteContext, ref: Any, resource_type: str, kind_name: str, expression: str) -> int:
    """A reference that must point at a current resource of one kind; pointing at another kind of the same type
    (an enrolment officer where a claim administrator belongs) says so instead of "does not exist"."""
    try:
        return ctx.resolve(ref, [resource_type], expression, kinds=[kind_name])[1]
    except FhirError:
        try:
            other, _ = ctx.resolve(ref, [resource_type], expression)
        except FhirError:
            other = None
        if other is None:
            raise
        shown = ref.get("reference") if isinstance(ref, dict) else None
        raise business_rule(
            f"{shown or 'The reference'} is a {KIND_LABELS.get(other.name, other.name)}, not a "
            f"{KIND_LABELS.get(kind_name, kind_name)}", expression) from None


def checked_length(value: str | None, limit: int, what: str, expression: str) -> str | None:
    require(value is None or len(value) <= limit, f"{what} is at most {limit} characters", expression)
    return value


def full_date(value: Any, what: str, expression: str) -> date:
    """A full calendar date; a dateTime keeps its date part. Partial dates (YYYY, YYYY-MM) cannot be stored."""
    require(isinstance(value, str) and len(value) >= 10 and (len(value) == 10 or value[10] == "T"),
            f"{what} must be a full date (YYYY-MM-DD)", expression)
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise FhirError.one(400, "value", f"{what} '{value[:40]}' is not a calendar date",
                            expression=expression) from None


def role_code(resource: dict[str, Any], rtype: str) -> str:
    code = identifier_value(resource, "Code")
    require(isinstance(code, str) and 0 < len(code) <= CODE_MAX,
            f"The code (identifier Code) is required, at most {CODE_MAX} characters", f"{rtype}.identifier")
    return str(code)


def telecom_values(resource: dict[str, Any], rtype: str) -> dict[str, Any]:
    return {
        "phone": checked_length(telecom_value(resource, "phone"), 50, "phone", f"{rtype}.telecom"),
        "email": checked_length(telecom_value(resource, "email"), 200, "email", f"{rtype}.telecom"),
    }


# --- the practitioners ---------------------------------------------------------------------------------------


class PractitionerKind(ResourceKind):
    """What claim administrators and enrolment officers share: name, birth date, telecom, qualification."""

    resource_type = "Practitioner"
    qualification = ""
    label = ""

    def __init__(self) -> None:
        t = self.table
        self.search_params = {
            **common_params(self),
            "family": string_param("family", t.c.family_norm, raw_columns=(t.c.last_name,), doc="Last name"),
            "given": string_param("given", t.c.given_norm, raw_columns=(t.c.other_names,),
                                  word_columns=(t.c.given_norm, t.c.other_names), doc="Other names"),
            "name": string_param("name", t.c.family_norm, t.c.given_norm,
                                 raw_columns=(t.c.last_name, t.c.other_names),
                                 word_columns=(t.c.given_norm, t.c.other_names), doc="Last or other names"),
            "qualification": constant_code_param(
                "qualification", self.qualification,
                "CA (claim administrator) or EO (enrolment officer), system practitioner-qualification-type"),
            "birthdate": date_param("birthdate", t.c.dob, doc="Date of birth"),
            "phone": token_param("phone", t.c.phone, systems=frozenset({"phone"}), doc="Phone number"),
            "email": token_param("email", t.c.email, systems=frozenset({"email"}), doc="Email address"),
            "telecom": telecom_param(t.c.phone, t.c.email),
        }
        self.sort_params = {
            **common_sorts(self),
            "family": SortKey(t.c.family_norm),
            "given": SortKey(t.c.given_norm),
            "name": SortKey(t.c.family_norm),
            "birthdate": SortKey(t.c.dob, "date"),
        }

    def accepts(self, resource: dict[str, Any]) -> bool:
        qualifications = resource.get("qualification")
        concepts = [q.get("code") for q in qualifications if isinstance(q, dict)] \
            if isinstance(qualifications, list) else []
        return self.qualification in concept_codes(concepts)

    # --- to FHIR ---------------------------------------------------------------------------------------

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        rows = conn.execute(select(self.table).where(self.table.c.pk.in_(pks))).all()
        addresses = self._addresses(conn, rows)
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            res: dict[str, Any] = {
                "identifier": identifiers(row.code, row.uuid),
                # The profile allows one given (1..1): the other names come back as stored, one string.
                "name": [{"use": "official", "family": row.last_name, "given": [row.other_names]}],
            }
            if tel := telecoms(phone=row.phone, email=row.email):
                res["telecom"] = tel
            if row.pk in addresses:
                res["address"] = [addresses[row.pk]]
            if row.dob is not None:
                res["birthDate"] = row.dob.isoformat()
            res["qualification"] = [{"code": qualification_concept(self.qualification)}]
            out[row.pk] = res
        return out

    def _addresses(self, conn: Connection, rows: list[Row]) -> dict[int, dict[str, Any]]:
        return {}

    # --- from FHIR -------------------------------------------------------------------------------------

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        t = self.table
        code = role_code(resource, "Practitioner")
        ctx.expect_unique(t, "code", code, f"{self.label.capitalize()} code", "Practitioner.identifier")
        names = resource.get("name") or [{}]
        name = names[0] if isinstance(names[0], dict) else {}
        last_name = name.get("family") or ""
        other_names = " ".join(g for g in name.get("given") or [] if isinstance(g, str))
        require(0 < len(last_name) <= 100, "name.family is required (at most 100 characters)",
                "Practitioner.name[0].family")
        require(0 < len(other_names) <= 100, "name.given is required (at most 100 characters)",
                "Practitioner.name[0].given")
        dob = full_date(resource.get("birthDate"), "birthDate", "Practitioner.birthDate")
        require(dob <= date.today(), "birthDate cannot be in the future", "Practitioner.birthDate")
        values: dict[str, Any] = {
            "code": code,
            "last_name": last_name,
            "other_names": other_names,
            "family_norm": normalise_text(last_name)[:100],
            "given_norm": normalise_text(other_names)[:100],
            "dob": dob,
            **telecom_values(resource, "Practitioner"),
            **self._address_values(ctx, resource),
        }
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, t)
            return ctx.insert(t, values)
        values["uuid"] = uuid_for_update(ctx, resource, t, current)
        ctx.update(t, current.pk, values)
        if (last_name, other_names) != (current.last_name, current.other_names):
            self._renamed(ctx, int(current.pk))
        return int(current.pk)

    def _address_values(self, ctx: WriteContext, resource: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _renamed(self, ctx: WriteContext, pk: int) -> None:
        """Hook: re-version what shows this practitioner's name."""

    def _blocking_role(self, ctx: WriteContext, role_table: Table, column: str, pk: int) -> Row | None:
        return ctx.conn.execute(select(role_table.c.code, role_table.c.id).where(
            role_table.c[column] == pk, is_current(role_table)).order_by(role_table.c.pk).limit(1)).first()


class ClaimAdminKind(PractitionerKind):
    name = "claim-admin"
    profile_id = "openimis-claim-administrator-practitioner"
    table = claim_admin
    scope = location_scope.CLAIM_ADMIN
    qualification = "CA"
    label = "claim administrator"

    def _renamed(self, ctx: WriteContext, pk: int) -> None:
        # Health facilities list their claim administrators by name (Organization.contact).
        hfs = ctx.conn.execute(select(claim_admin_role.c.hf_pk).where(
            claim_admin_role.c.claim_admin_pk == pk, is_current(claim_admin_role)).distinct()).scalars()
        for hf_pk in hfs:
            ctx.mark("health-facility", int(hf_pk))

    def delete(self, ctx: WriteContext, current: Row) -> None:
        role = self._blocking_role(ctx, claim_admin_role, "claim_admin_pk", int(current.pk))
        if role is not None:
            raise conflict(f"Claim administrator {current.code} still has the current role {role.code} "
                           f"(PractitionerRole/{role.id}); delete that role first")


class EnrolmentOfficerKind(PractitionerKind):
    name = "enrolment-officer"
    profile_id = "openimis-enrolment-officer-practitioner"
    table = officer
    scope = location_scope.OFFICER
    qualification = "EO"
    label = "enrolment officer"

    def __init__(self) -> None:
        super().__init__()
        t = officer
        self.search_params.update({
            "address": address_param(t.c.location_pk, t.c.address),
            "address-location": address_location_param(t.c.location_pk),
            "address-district": location_part_param("address-district", t.c.location_pk, None, "District name"),
            "address-state": location_part_param("address-state", t.c.location_pk, "region_pk", "Region name"),
        })

    def _addresses(self, conn: Connection, rows: list[Row]) -> dict[int, dict[str, Any]]:
        places = location_names(conn, {row.location_pk for row in rows if row.location_pk is not None})
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            if row.location_pk is None:
                continue
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
            out[row.pk] = address
        return out

    def _address_values(self, ctx: WriteContext, resource: dict[str, Any]) -> dict[str, Any]:
        addresses = resource.get("address") or []
        if not addresses or not isinstance(addresses[0], dict):
            return {"location_pk": None, "address": None}
        address = addresses[0]
        expr = "Practitioner.address[0].extension[locationDistrict]"
        loc_ref = ext_value(address, LOCATION_EXT, "valueReference")
        require(loc_ref is not None, "The address needs the district (address-location-reference)", expr)
        lines = address.get("line") or []
        return {
            "location_pk": location_of_level(ctx, loc_ref, "D", expr),
            "address": checked_length(lines[0] if lines else None, 100, "address.line",
                                      "Practitioner.address[0].line"),
        }

    def delete(self, ctx: WriteContext, current: Row) -> None:
        pk = int(current.pk)
        role = self._blocking_role(ctx, officer_role, "officer_pk", pk)
        if role is not None:
            raise conflict(f"Enrolment officer {current.code} still has the current role {role.code} "
                           f"(PractitionerRole/{role.id}); delete that role first")
        role = self._blocking_role(ctx, officer_role, "substitute_officer_pk", pk)
        if role is not None:
            raise conflict(f"Enrolment officer {current.code} is the substitute in the current role {role.code} "
                           f"(PractitionerRole/{role.id}); name another substitute there first")


# An officer's address sits in a district: that district cannot be deleted while they are current, and renaming
# or moving it re-renders the officer's address.
register_location_user(EnrolmentOfficerKind.name, officer, "location_pk", "code", "enrolment officer")
