"""OpenIMISGroup ↔ family (domain §2.4, §3.1.1): one head, members that reference their family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, select, update

from hifhir.auth import scope as location_scope
from hifhir.fhir.elements import (
    CS,
    coding,
    ext,
    ext_value,
    extension,
    first_coding,
    identifier_value,
    identifiers,
    reference,
    sub_extension,
)
from hifhir.fhir.errors import conflict
from hifhir.fhir.kind import ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import (
    address_location_param,
    check_unique_code,
    concept_from_list,
    configured_code,
    location_names_plan,
    location_of_level,
    resolve_new_id,
    uuid_for_update,
    uuid_of,
)
from hifhir.fhir.profiles.location import register_location_user
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    SortKey,
    bool_param,
    link_ref,
    reference_param,
    string_param,
    token_param,
)
from hifhir.store.codelists import displays_from, displays_read
from hifhir.store.fast import DriverQuery, Plan, any_pk, run_plan
from hifhir.store.tables import family, insuree, is_current

# IG defect (ig/README.md §9.5): the example codes the family type in core group-type; both systems are
# accepted.
GROUP_TYPE_SYSTEMS = {CS + "group-type", "http://hl7.org/fhir/group-type"}


# Built once: constructing these per render cost more than running them (a Group is re-rendered whenever a member's
# policy changes, e.g. on every enrolment).
_LABEL_LISTS = ("group-confirmation-type", "group-type")
_FAMILIES = DriverQuery(select(family).where(any_pk(family.c.pk)))
_MEMBERS = DriverQuery(
    select(insuree.c.pk, insuree.c.id, insuree.c.family_pk, insuree.c.last_name, insuree.c.other_names,
           insuree.c.has_active_policy)
    .where(any_pk(insuree.c.family_pk), is_current(insuree))
    .order_by(insuree.c.pk)
)


class GroupKind(ResourceKind):
    resource_type = "Group"
    name = "group"
    profile_id = "openimis-group"
    table = family
    scope = location_scope.FAMILY
    patchable = frozenset({"active"})  # a member's policy (de)activated: contract.apply_active_policy_flags

    def __init__(self) -> None:
        t = family
        head = insuree.alias("head_search")
        self.search_params = {
            **common_params(self),
            "address-location": address_location_param(t.c.location_pk),
            "member": reference_param(
                "member", "Patient",
                link_ref(t.c.pk, insuree.c.family_pk, insuree.c.pk, "patient", is_current(insuree)),
                doc="A member (Patient)"),
            # Group.name is rendered "<head's last name> <head's other names>": search that whole string.
            "name": string_param(
                "name",
                select(head.c.family_norm + " " + head.c.given_norm).where(
                    head.c.pk == t.c.head_insuree_pk).scalar_subquery(),
                raw_columns=(select(head.c.last_name + " " + head.c.other_names).where(
                    head.c.pk == t.c.head_insuree_pk).scalar_subquery(),),
                doc="Family name: the head's last and other names"),
            "type": token_param("type", t.c.family_type, doc="Family type code (group-type)"),
            "poverty": bool_param("poverty", t.c.poverty, doc="Poverty status"),
            "actual": bool_param("actual", is_current(family)),
        }
        self.sort_params = {**common_sorts(self), "code": SortKey(t.c.code)}

    # --- to FHIR ---------------------------------------------------------------------------------------

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        return run_plan(conn, self.render_plan(conn, pks))

    def render_plan(self, conn: Connection, pks: list[int]) -> Plan[dict[int, dict[str, Any]]]:
        families, member_rows, label_rows = yield [
            (_FAMILIES, {"pks": pks}), (_MEMBERS, {"pks": pks}), displays_read(_LABEL_LISTS)]
        rows = {r.pk: r for r in families}
        members: dict[int, list[Row]] = {pk: [] for pk in pks}
        for m in member_rows:
            members[m.family_pk].append(m)
        places = yield from location_names_plan({r.location_pk for r in rows.values()})
        labels = displays_from(_LABEL_LISTS, label_rows)
        confirmation_labels, type_labels = labels["group-confirmation-type"], labels["group-type"]
        out = {}
        for pk, row in rows.items():
            head = next((m for m in members[pk] if m.pk == row.head_insuree_pk), None)
            place = places[row.location_pk]
            address: dict[str, Any] = {
                "extension": [
                    ext("address-municipality", "valueString", place.ward),
                    ext("address-location-reference", "valueReference", reference("Location", place.id)),
                ],
                "use": "home", "type": "physical",
            }
            if row.address:
                address["line"] = [row.address]
            address.update({"city": place.name, "district": place.district, "state": place.region})
            exts = [ext("group-address", "valueAddress", address)]
            if row.poverty is not None:
                exts.append(ext("group-poverty-status", "valueBoolean", bool(row.poverty)))
            if row.family_type:
                type_coding = coding(row.family_type_system or CS + "group-type", row.family_type,
                                     type_labels.get(row.family_type))
                exts.append(ext("group-type", "valueCodeableConcept", {"coding": [type_coding]}))
            if row.confirmation_no:
                parts: list[dict[str, Any]] = [{"url": "number", "valueString": row.confirmation_no}]
                concept = concept_from_list("group-confirmation-type", row.confirmation_type,
                                            confirmation_labels)
                if concept:
                    parts.append({"url": "type", "valueCodeableConcept": concept})
                exts.append({"extension": parts, "url": ext("group-confirmation", "x", None)["url"]})
            res: dict[str, Any] = {
                "extension": exts,
                "identifier": identifiers(row.code, uuid_of(row)),
                "active": any(m.has_active_policy for m in members[pk]),
                "type": "person",
                "actual": True,
            }
            if head is not None:
                res["name"] = f"{head.last_name} {head.other_names}"
            res["quantity"] = len(members[pk])
            res["member"] = [{"entity": reference("Patient", m.id)} for m in members[pk]]
            out[pk] = res
        return out

    def patch_body(self, body: dict[str, Any], change: Mapping[str, Any]) -> bool:
        body["active"] = bool(change["active"])
        return True

    # --- from FHIR -------------------------------------------------------------------------------------

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        conn = ctx.conn
        member_pks: list[int] = []
        for i, member in enumerate(resource.get("member") or []):
            _, pk = ctx.resolve(member.get("entity"), ["Patient"], f"Group.member[{i}].entity")
            require(pk not in member_pks, "A member is listed twice", f"Group.member[{i}]")
            member_pks.append(pk)
        require(bool(member_pks), "A family needs at least its head as member", "Group.member")
        members = {r.pk: r for r in conn.execute(
            select(insuree.c.pk, insuree.c.chf_id, insuree.c.is_head, insuree.c.family_pk)
            .where(insuree.c.pk.in_(member_pks)))}
        code = identifier_value(resource, "Code")
        head_pk = self._head(members, code, current)
        code = code or members[head_pk].chf_id
        require(len(code) <= 50, "Family code is at most 50 characters", "Group.identifier")
        check_unique_code(conn, family, "code", code, current, "Family code", "Group.identifier")
        for pk in member_pks:
            other = members[pk].family_pk
            if other is not None and (current is None or other != current.pk) and members[pk].is_head:
                raise conflict(f"Insuree {members[pk].chf_id} heads another family", "Group.member")

        address_ext = extension(resource, "group-address")
        require(address_ext is not None, "The family address (extension group-address) is required",
                "Group.extension[address]")
        address = address_ext.get("valueAddress") or {}
        loc = extension(address, "address-location-reference")
        require(loc is not None, "The family address needs its village (address-location-reference)",
                "Group.extension[address].valueAddress.extension")
        village_pk = location_of_level(ctx, loc.get("valueReference"), "V",
                                       "Group.extension[address].valueAddress.extension[location]")
        type_coding = first_coding(ext_value(resource, "group-type", "valueCodeableConcept"))
        family_type = system = None
        if type_coding is not None:
            system = type_coding.get("system") or CS + "group-type"
            require(system in GROUP_TYPE_SYSTEMS, "Unknown family type system", "Group.extension[groupType]")
            family_type = configured_code(ctx, "group-type", {"coding": [type_coding]},
                                          "Group.extension[groupType]")
        confirmation = extension(resource, "group-confirmation")
        confirmation_no = confirmation_type = None
        if confirmation is not None:
            confirmation_no = (sub_extension(confirmation, "number") or {}).get("valueString")
            require(confirmation_no is None or len(confirmation_no) <= 12,
                    "Confirmation number is at most 12 characters", "Group.extension[confirmation]")
            type_ext = sub_extension(confirmation, "type")
            confirmation_type = configured_code(ctx, "group-confirmation-type",
                                                type_ext.get("valueCodeableConcept") if type_ext else None,
                                                "Group.extension[confirmation].extension[type]")
        values = {
            "code": code, "head_insuree_pk": head_pk, "location_pk": village_pk,
            "poverty": ext_value(resource, "group-poverty-status", "valueBoolean"),
            "family_type": family_type, "family_type_system": system,
            "address": " ".join(address.get("line") or []) or None,
            "confirmation_no": confirmation_no, "confirmation_type": confirmation_type,
        }
        require(values["address"] is None or len(values["address"]) <= 200,
                "Address is at most 200 characters", "Group.extension[address]")
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, family)
            pk = ctx.insert(family, values)
            previous: set[int] = set()
        else:
            pk = int(current.pk)
            values["uuid"] = uuid_for_update(ctx, resource, family, current)
            ctx.update(family, pk, values)
            previous = {r.pk for r in conn.execute(select(insuree.c.pk).where(
                insuree.c.family_pk == pk, is_current(insuree)))}
        self._attach(ctx, pk, head_pk, member_pks, previous, members)
        return pk

    @staticmethod
    def _head(members: dict[int, Row], code: str | None, current: Row | None) -> int:
        flagged = [pk for pk, m in members.items() if m.is_head and (
            m.family_pk is None or (current is not None and m.family_pk == current.pk))]
        by_code = [pk for pk, m in members.items() if code is not None and m.chf_id == code]
        if by_code:
            return by_code[0]
        if len(flagged) == 1:
            return flagged[0]
        if current is not None and current.head_insuree_pk in members:
            return int(current.head_insuree_pk)
        require(len(flagged) <= 1, "Only one member can be the head (isHead)", "Group.member")
        raise conflict("A family needs a head: one member must have isHead=true or the insurance number "
                       "given as the family Code", "Group.member")

    @staticmethod
    def _attach(ctx: WriteContext, family_pk: int, head_pk: int, member_pks: list[int], previous: set[int],
                members: dict[int, Row]) -> None:
        conn = ctx.conn
        for pk in previous - set(member_pks):
            conn.execute(update(insuree).where(insuree.c.pk == pk).values(family_pk=None, is_head=False))
            ctx.mark("patient", pk)
        for pk in member_pks:
            old = members[pk].family_pk
            if old is not None and old != family_pk:
                ctx.mark("group", old)  # the member leaves its former family
            conn.execute(update(insuree).where(insuree.c.pk == pk).values(
                family_pk=family_pk, is_head=pk == head_pk))
            ctx.mark("patient", pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        """Members stay registered as insurees, detached from the family
        (openIMIS FamilyService.set_deleted)."""
        for (pk,) in ctx.conn.execute(select(insuree.c.pk).where(
                insuree.c.family_pk == current.pk, is_current(insuree))).all():
            ctx.conn.execute(update(insuree).where(insuree.c.pk == pk).values(family_pk=None, is_head=False))
            ctx.mark("patient", pk)


register_location_user("group", family, "location_pk", "code", "family")
