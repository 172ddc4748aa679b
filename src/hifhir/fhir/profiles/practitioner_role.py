"""The two PractitionerRole profiles (IG §1b rows 9–10; domain §2.6, §2.7).

* `CA` — OpenIMISClaimAdministratorPractitionerRole ↔ `claim_admin_role`: a claim administrator entering the
  claims of one health facility (practitioner → CA Practitioner, organization → health facility).
* `EO` — OpenIMISEnrolmentOfficerPractitionerRole ↔ `officer_role` + `officer_role_village`: the villages an
  enrolment officer serves (location 0..*, villages only), until `period.end` ("works to"), and the officer who
  takes over afterwards (extension `practitioner-role-substitution-reference`, another current officer).

Decisions:
* One current role per (claim administrator, health facility): a second one would only duplicate the facility's
  contact entry, so it is a 409.
* `period.end` is a dateTime in FHIR but openIMIS keeps a date (WorksTo): a dateTime keeps its date part and comes
  back as a date; a partial date (YYYY, YYYY-MM) is refused.
* The villages come back ordered by location, not in the order they were sent (the link has no position).
* A health facility lists its claim administrators in `Organization.contact`: creating, moving, deleting (or
  restoring) a CA role re-versions the facilities concerned.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from hifhir.auth import scope as location_scope
from hifhir.fhir.elements import ext, ext_value, identifiers, reference, telecoms
from hifhir.fhir.errors import conflict
from hifhir.fhir.kind import ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import location_of_level, resolve_new_id, uuid_for_update
from hifhir.fhir.profiles.location import LOCATION_USERS, LocationUser
from hifhir.fhir.profiles.practitioner import (
    concept_codes,
    full_date,
    qualification_concept,
    resolve_kind,
    role_code,
    telecom_param,
    telecom_values,
)
from hifhir.fhir.profiles.practitioner import constant_code_param as role_param
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import column_ref, link_ref, reference_param, token_param
from hifhir.store.tables import (
    claim_admin,
    claim_admin_role,
    health_facility,
    is_current,
    location,
    officer,
    officer_role,
    officer_role_village,
)

SUBSTITUTION_EXT = "practitioner-role-substitution-reference"
ROLE_DOC = "CA (claim administrator) or EO (enrolment officer), system practitioner-qualification-type"


class _RoleKind(ResourceKind):
    resource_type = "PractitionerRole"
    role = ""

    def accepts(self, resource: dict[str, Any]) -> bool:
        return self.role in concept_codes(resource.get("code"))

    def _common_params(self) -> dict[str, Any]:
        t = self.table
        return {
            **common_params(self),
            "role": role_param("role", self.role, ROLE_DOC),
            "phone": token_param("phone", t.c.phone, systems=frozenset({"phone"}), doc="Phone number"),
            "email": token_param("email", t.c.email, systems=frozenset({"email"}), doc="Email address"),
            "telecom": telecom_param(t.c.phone, t.c.email),
        }


# --- claim administrator ↔ health facility ---------------------------------------------------------------------

_CA_ALIAS, _HF_ALIAS = claim_admin.alias("ca"), health_facility.alias("hf")
_CA_RENDER = (
    select(claim_admin_role, _CA_ALIAS.c.id.label("practitioner_id"), _HF_ALIAS.c.id.label("hf_id"))
    .select_from(claim_admin_role
                 .join(_CA_ALIAS, _CA_ALIAS.c.pk == claim_admin_role.c.claim_admin_pk)
                 .join(_HF_ALIAS, _HF_ALIAS.c.pk == claim_admin_role.c.hf_pk))
    .where(claim_admin_role.c.pk.in_(bindparam("pks", expanding=True)))
)


class ClaimAdminRoleKind(_RoleKind):
    name = "claim-admin-role"
    profile_id = "openimis-claim-administrator-practitioner-role"
    table = claim_admin_role
    scope = location_scope.CLAIM_ADMIN_ROLE
    role = "CA"

    def __init__(self) -> None:
        t = claim_admin_role
        self.search_params = {
            **self._common_params(),
            "practitioner": reference_param("practitioner", "Practitioner",
                                            column_ref(t.c.claim_admin_pk, "claim-admin"),
                                            doc="The claim administrator"),
            "organization": reference_param("organization", "Organization", column_ref(t.c.hf_pk, "health-facility"),
                                            doc="The health facility whose claims the administrator enters"),
        }
        self.sort_params = common_sorts(self)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(_CA_RENDER, {"pks": pks}):
            res: dict[str, Any] = {
                "identifier": identifiers(row.code, row.uuid),
                "practitioner": reference("Practitioner", row.practitioner_id),
                "organization": reference("Organization", row.hf_id),
                "code": [qualification_concept("CA")],
            }
            if tel := telecoms(phone=row.phone, email=row.email):
                res["telecom"] = tel
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        t = claim_admin_role
        code = role_code(resource, "PractitionerRole")
        ctx.expect_unique(t, "code", code, "Claim administrator role code", "PractitionerRole.identifier")
        ca_pk = resolve_kind(ctx, resource.get("practitioner"), "Practitioner", "claim-admin",
                             "PractitionerRole.practitioner")
        hf_pk = resolve_kind(ctx, resource.get("organization"), "Organization", "health-facility",
                             "PractitionerRole.organization")
        same = select(t.c.code).where(t.c.claim_admin_pk == ca_pk, t.c.hf_pk == hf_pk, is_current(t))
        if current is not None:
            same = same.where(t.c.pk != current.pk)
        other = ctx.conn.execute(same.limit(1)).first()
        if other is not None:
            raise conflict(f"This claim administrator already has the role {other.code} at this health facility",
                           "PractitionerRole.organization")
        values: dict[str, Any] = {"code": code, "claim_admin_pk": ca_pk, "hf_pk": hf_pk,
                                  **telecom_values(resource, "PractitionerRole")}
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, t)
            pk = ctx.insert(t, values)
            ctx.mark("health-facility", hf_pk)
            return pk
        values["uuid"] = uuid_for_update(ctx, resource, t, current)
        ctx.update(t, current.pk, values)
        if current.deleted or (ca_pk, hf_pk) != (current.claim_admin_pk, current.hf_pk):
            ctx.mark("health-facility", hf_pk)
            ctx.mark("health-facility", int(current.hf_pk))
        return int(current.pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        # flush renders the touched facilities before it flags the deleted role: flag it now so that the
        # facility's new version no longer lists this administrator.
        t = claim_admin_role
        ctx.conn.execute(update(t).where(t.c.pk == current.pk).values(deleted=True))
        ctx.mark("health-facility", int(current.hf_pk))


# --- enrolment officer ↔ villages ------------------------------------------------------------------------------

_EO_ALIAS, _SUB_ALIAS = officer.alias("eo"), officer.alias("sub")
_EO_RENDER = (
    select(officer_role, _EO_ALIAS.c.id.label("practitioner_id"), _SUB_ALIAS.c.id.label("substitute_id"))
    .select_from(officer_role
                 .join(_EO_ALIAS, _EO_ALIAS.c.pk == officer_role.c.officer_pk)
                 .outerjoin(_SUB_ALIAS, _SUB_ALIAS.c.pk == officer_role.c.substitute_officer_pk))
    .where(officer_role.c.pk.in_(bindparam("pks", expanding=True)))
)
_EO_VILLAGES = (
    select(officer_role_village.c.role_pk, location.c.id)
    .select_from(officer_role_village.join(location, location.c.pk == officer_role_village.c.location_pk))
    .where(officer_role_village.c.role_pk.in_(bindparam("pks", expanding=True)))
    .order_by(officer_role_village.c.role_pk, location.c.pk)
)


class EnrolmentOfficerRoleKind(_RoleKind):
    name = "enrolment-officer-role"
    profile_id = "openimis-enrolment-officer-practitioner-role"
    table = officer_role
    scope = location_scope.OFFICER_ROLE
    role = "EO"

    def __init__(self) -> None:
        t, v = officer_role, officer_role_village
        self.search_params = {
            **self._common_params(),
            "practitioner": reference_param("practitioner", "Practitioner",
                                            column_ref(t.c.officer_pk, "enrolment-officer"),
                                            doc="The enrolment officer"),
            "location": reference_param("location", "Location", link_ref(t.c.pk, v.c.role_pk, v.c.location_pk,
                                                                         "location"),
                                        doc="A village the officer serves"),
            "substitute": reference_param("substitute", "Practitioner",
                                          column_ref(t.c.substitute_officer_pk, "enrolment-officer"),
                                          doc="The officer who takes over after period.end (extension "
                                              "practitioner-role-substitution-reference)"),
        }
        self.sort_params = common_sorts(self)

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        villages: dict[int, list[str]] = defaultdict(list)
        for role_pk, village_id in conn.execute(_EO_VILLAGES, {"pks": pks}):
            villages[role_pk].append(village_id)
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(_EO_RENDER, {"pks": pks}):
            res: dict[str, Any] = {}
            if row.substitute_id is not None:
                res["extension"] = [ext(SUBSTITUTION_EXT, "valueReference",
                                        reference("Practitioner", row.substitute_id))]
            res["identifier"] = identifiers(row.code, row.uuid)
            if row.works_to is not None:
                res["period"] = {"end": row.works_to.isoformat()}
            res["practitioner"] = reference("Practitioner", row.practitioner_id)
            res["code"] = [qualification_concept("EO")]
            if villages[row.pk]:
                res["location"] = [reference("Location", vid) for vid in villages[row.pk]]
            if tel := telecoms(phone=row.phone, email=row.email):
                res["telecom"] = tel
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        t = officer_role
        code = role_code(resource, "PractitionerRole")
        ctx.expect_unique(t, "code", code, "Enrolment officer role code", "PractitionerRole.identifier")
        officer_pk = resolve_kind(ctx, resource.get("practitioner"), "Practitioner", "enrolment-officer",
                                  "PractitionerRole.practitioner")
        period = resource.get("period")
        works_to = None
        if isinstance(period, dict) and period.get("end") is not None:
            works_to = full_date(period["end"], "period.end (works to)", "PractitionerRole.period.end")
        substitute_pk = None
        sub_ref = ext_value(resource, SUBSTITUTION_EXT, "valueReference")
        if sub_ref is not None:
            expr = "PractitionerRole.extension[substitution]"
            substitute_pk = resolve_kind(ctx, sub_ref, "Practitioner", "enrolment-officer", expr)
            require(substitute_pk != officer_pk, "An enrolment officer cannot be their own substitute", expr)
        village_pks: list[int] = []
        for i, ref in enumerate(resource.get("location") or []):
            expr = f"PractitionerRole.location[{i}]"
            village_pk = location_of_level(ctx, ref, "V", expr)
            require(village_pk not in village_pks, "This village is listed twice", expr)
            village_pks.append(village_pk)
        values: dict[str, Any] = {"code": code, "officer_pk": officer_pk, "works_to": works_to,
                                  "substitute_officer_pk": substitute_pk,
                                  **telecom_values(resource, "PractitionerRole")}
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, t)
            pk = ctx.insert(t, values)
        else:
            pk = int(current.pk)
            values["uuid"] = uuid_for_update(ctx, resource, t, current)
            ctx.update(t, pk, values)
            ctx.conn.execute(delete(officer_role_village).where(officer_role_village.c.role_pk == pk))
        if village_pks:
            ctx.conn.execute(insert(officer_role_village),
                             [{"role_pk": pk, "location_pk": village_pk} for village_pk in village_pks])
        return pk

    def delete(self, ctx: WriteContext, current: Row) -> None:
        # The villages of a deleted role no longer count as served (nor keep those villages in use).
        ctx.conn.execute(delete(officer_role_village).where(officer_role_village.c.role_pk == current.pk))


@dataclass(frozen=True, slots=True)
class _ServedVillages(LocationUser):
    """Villages served by current enrolment officer roles cannot be deleted (nor change level). The role shows only
    the village's id, so renaming or moving a village needs no new role version."""

    def in_use(self, conn: Connection, location_pk: int) -> str | None:
        row = conn.execute(
            select(officer_role.c.code)
            .select_from(officer_role_village.join(officer_role, officer_role.c.pk == officer_role_village.c.role_pk))
            .where(officer_role_village.c.location_pk == location_pk, is_current(officer_role))
            .limit(1)).first()
        return None if row is None else f"{self.label} {row.code}"

    def mark_in(self, ctx: WriteContext, subtree: Any) -> None:
        return None


LOCATION_USERS.append(_ServedVillages(EnrolmentOfficerRoleKind.name, officer_role_village, "location_pk", "role_pk",
                                      "enrolment officer role"))
