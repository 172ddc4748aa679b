"""Location scoping (domain §4.1): which rows of a location-scoped kind a user may see and write.

A user's scope is resolved once per principal load (`load_scope`, cached with the principal by PrincipalCache):
- the IMIS administrator, technical users (system clients) and interactive users with no district: everything
  (`Principal.locations` None) — national staff are not attached to districts;
- an interactive user attached to districts (user_district): those districts and every location below them;
- an enrolment officer (app_user.officer_pk): the villages of the officer's current roles (not deleted, `works_to`
  not past);
- a claim administrator (app_user.claim_admin_pk): the district of the user's facility (app_user.hf_pk, else the
  facility of the administrator's current role) and everything below it for look-ups, and that facility's claims
  only (`Principal.hf_pk`).
An officer or claim administrator whose record links to nothing sees no scoped row at all (fail closed).
`Principal.location_ancestors` holds the ancestors of the scope's locations: a user sees the Location resources
above its own (the address of an insuree names its region), never their data.

Each kind declares how its rows reach a location (`ResourceKind.scope`, built with the rules below); `condition`
turns the declaration and a principal into one SQL condition on the kind's table — the scope's location pks go in
as one bound array (store/fast.any_pk), so a scoped search costs one predicate, never a query per row. Unscoped
principals and master-data kinds (scope None) get no condition at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, and_, bindparam, false, or_, select

from hifhir.fhir.errors import forbidden, not_found
from hifhir.store.fast import any_pk
from hifhir.store.tables import (
    DefaultCollation,
    bill,
    claim,
    claim_admin_role,
    family,
    health_facility,
    insuree,
    invoice,
    is_current,
    location,
    officer,
    officer_role,
    officer_role_village,
    policy,
    policy_holder,
    user_district,
)

if TYPE_CHECKING:
    from hifhir.auth.users import Principal
    from hifhir.fhir.kind import ResourceKind


class Rule:
    """The condition on a kind's table keeping the rows inside a principal's scope, or None when it keeps every row.
    An object, not a function, so that a kind can hold one as a class attribute (a function would become a method)."""

    __slots__ = ("_build",)

    def __init__(self, build: Callable[[Table, Principal], Any]) -> None:
        self._build = build

    def __call__(self, table: Table, principal: Principal) -> Any:
        return self._build(table, principal)


NO_SCOPE: tuple[None, frozenset[int], None] = (None, frozenset(), None)


# --- the scope of a user --------------------------------------------------------------------------------------------


def load_scope(conn: Connection, user: Any, is_admin: bool) -> tuple[frozenset[int] | None, frozenset[int], int | None]:
    """(locations with their descendants or None, their ancestors, the claim administrator's facility) of an
    app_user row (pk, user_type, hf_pk, officer_pk, claim_admin_pk)."""
    user_type = user.user_type or "interactive"
    if is_admin or user_type == "technical":
        return NO_SCOPE
    hf_pk: int | None = None
    if user_type == "officer":
        roots = _officer_villages(conn, user.officer_pk) if user.officer_pk is not None else []
    elif user_type == "claim_admin":
        hf_pk = user.hf_pk if user.hf_pk is not None else _claim_admin_facility(conn, user.claim_admin_pk)
        district = None if hf_pk is None else conn.execute(
            select(health_facility.c.location_pk).where(health_facility.c.pk == hf_pk)).scalar()
        roots = [] if district is None else [int(district)]
    else:
        roots = [int(pk) for pk in conn.execute(
            select(user_district.c.location_pk).where(user_district.c.user_pk == user.pk)).scalars()]
        if not roots:
            # National staff: every location; a facility still narrows their claims (openIMIS HF users).
            return None, frozenset(), user.hf_pk
        hf_pk = user.hf_pk
    if not roots:
        return frozenset(), frozenset(), hf_pk
    return _descendants(conn, roots), _ancestors(conn, roots), hf_pk


def _officer_villages(conn: Connection, officer_pk: int) -> list[int]:
    r, v = officer_role, officer_role_village
    today = date.today()
    return [int(pk) for pk in conn.execute(
        select(v.c.location_pk).select_from(v.join(r, r.c.pk == v.c.role_pk)).where(
            r.c.officer_pk == officer_pk, is_current(r), or_(r.c.works_to.is_(None), r.c.works_to >= today))
    ).scalars()]


def _claim_admin_facility(conn: Connection, claim_admin_pk: int | None) -> int | None:
    if claim_admin_pk is None:
        return None
    r = claim_admin_role
    found = conn.execute(select(r.c.hf_pk).where(r.c.claim_admin_pk == claim_admin_pk, is_current(r))
                         .order_by(r.c.pk).limit(1)).scalar()
    return None if found is None else int(found)


def _descendants(conn: Connection, roots: list[int]) -> frozenset[int]:
    # The ancestors are denormalised on every location: one query, no recursion.
    t = location
    return frozenset(int(pk) for pk in conn.execute(select(t.c.pk).where(or_(
        t.c.pk.in_(roots), t.c.region_pk.in_(roots), t.c.district_pk.in_(roots), t.c.ward_pk.in_(roots)))).scalars())


def _ancestors(conn: Connection, roots: list[int]) -> frozenset[int]:
    t = location
    rows = conn.execute(select(t.c.region_pk, t.c.district_pk, t.c.ward_pk).where(t.c.pk.in_(roots))).all()
    return frozenset(int(pk) for row in rows for pk in row if pk is not None) - frozenset(roots)


def is_scoped(principal: Principal) -> bool:
    return principal.locations is not None or principal.hf_pk is not None


# --- rules: how a kind's rows reach a location ------------------------------------------------------------------


def _locations(principal: Principal, column: Any) -> Any:
    assert principal.locations is not None
    return any_pk(column, "scope_locations", sorted(principal.locations))


def at(column: str) -> Rule:
    """The row's `column` holds a location pk inside the scope."""
    def rule(table: Table, principal: Principal) -> Any:
        return None if principal.locations is None else _locations(principal, table.c[column])
    return Rule(rule)


def via(column: str, target: Table, target_rule: Rule) -> Rule:
    """The row's `column` references a row of `target` that is inside the scope (by `target_rule`)."""
    def rule(table: Table, principal: Principal) -> Any:
        inner = target_rule(target, principal)
        if inner is None:
            return None
        # correlate(None): the same table may enclose this condition (a chain from Group to Patient): the
        # subquery must read its own rows, not the enclosing query's.
        return table.c[column].in_(select(target.c.pk).where(inner).correlate(None))
    return Rule(rule)


def linked(link: Table, own: str, link_rule: Rule) -> Rule:
    """Some row of the `link` table whose `own` column is this row's pk satisfies `link_rule` (an officer's role
    rows serving a village in scope)."""
    def rule(table: Table, principal: Principal) -> Any:
        inner = link_rule(link, principal)
        if inner is None:
            return None
        return table.c.pk.in_(select(link.c[own]).where(inner).correlate(None))
    return Rule(rule)


def typed(type_column: str, type_value: str, target_rule: Rule) -> Rule:
    """A polymorphic reference (`type_column` names what the row points at): of that type and in scope."""
    def rule(table: Table, principal: Principal) -> Any:
        found = target_rule(table, principal)
        return None if found is None else and_(table.c[type_column] == type_value, found)
    return Rule(rule)


def any_of(*rules: Rule) -> Rule:
    """In scope by any of the rules (an insuree: its own village or its family's)."""
    def rule(table: Table, principal: Principal) -> Any:
        found = [r(table, principal) for r in rules]
        if any(f is None for f in found):
            return None
        return or_(*found)
    return Rule(rule)


def facility(column: str) -> Rule:
    """A claim administrator's scope is their facility's rows; other users': the facility's district in scope."""
    by_location = via(column, health_facility, at("location_pk"))

    def rule(table: Table, principal: Principal) -> Any:
        if principal.hf_pk is not None:
            return table.c[column] == bindparam("scope_hf", principal.hf_pk, unique=True)
        return by_location(table, principal)
    return Rule(rule)


def _location_or_ancestor(table: Table, principal: Principal) -> Any:
    """Locations: those in the scope and the ancestors of those (a user sees where its villages are), and those
    created below the scope since it was resolved (their denormalised ancestors name a location of the scope): a
    district user reads the ward it just created, not 30 s later."""
    if principal.locations is None:
        return None
    scope = sorted(principal.locations)
    visible = any_pk(table.c.pk, "scope_locations", sorted(principal.locations | principal.location_ancestors))
    below = [any_pk(table.c[c], "scope_locations", scope) for c in ("ward_pk", "district_pk", "region_pk")]
    return or_(visible, *below)


# --- the rules of the kinds (ResourceKind.scope; README "Location scoping") -----------------------------------------

FAMILY = at("location_pk")  # its village
PATIENT = any_of(at("village_pk"), via("family_pk", family, FAMILY))  # its own village or its family's
POLICY = any_of(via("family_pk", family, FAMILY),  # informal sector: the family's village
                via("policy_holder_pk", policy_holder, at("location_pk")))  # formal sector: the holder's village
COVERAGE = via("policy_pk", policy, POLICY)
ENQUIRY = via("insuree_pk", insuree, PATIENT)
HEALTH_FACILITY = at("location_pk")  # its district
CLAIM = facility("hf_pk")
FEEDBACK = via("claim_pk", claim, CLAIM)  # a claim's feedback prompt and answers
INVOICE = any_of(via("policy_pk", policy, POLICY),
                 typed("subject_type", "family", via("subject_pk", family, FAMILY)),
                 typed("subject_type", "policy-holder", via("subject_pk", policy_holder, at("location_pk"))))
LOCATION = Rule(_location_or_ancestor)
_SERVES_VILLAGE = linked(officer_role_village, "role_pk", at("location_pk"))
OFFICER_ROLE = any_of(_SERVES_VILLAGE, via("officer_pk", officer, at("location_pk")))
OFFICER = any_of(at("location_pk"), linked(officer_role, "officer_pk", _SERVES_VILLAGE))  # district or villages
# A bill: its facility's, its insuree's, or (commission) its officer's; the payments platform's fees bills have no
# location and are seen by unrestricted users only.
BILL = any_of(typed("payee_type", "health-facility", facility("payee_pk")),
              typed("payee_type", "insuree", via("payee_pk", insuree, PATIENT)),
              typed("payee_type", "enrolment-officer", via("payee_pk", officer, OFFICER)))
PAYMENT_NOTICE = any_of(via("invoice_pk", invoice, INVOICE), via("bill_pk", bill, BILL))
CLAIM_ADMIN_ROLE = facility("hf_pk")
CLAIM_ADMIN = linked(claim_admin_role, "claim_admin_pk", facility("hf_pk"))  # a role at a facility in scope


# --- applying the scope -----------------------------------------------------------------------------------------


def condition(kind: ResourceKind, principal: Principal | None) -> Any:
    """The condition on `kind.table` keeping the rows this principal may see; None: no condition (every row)."""
    if principal is None or kind.scope is None or not is_scoped(principal):
        return None
    return kind.scope(kind.table, principal)


def visible_pks(conn: Connection, kind: ResourceKind, principal: Principal | None, pks: Iterable[int]) -> set[int]:
    """The pks among `pks` the principal may see (one query; none when nothing restricts)."""
    wanted = set(pks)
    cond = condition(kind, principal)
    if cond is None or not wanted:
        return wanted
    t = kind.table
    found = conn.execute(select(t.c.pk).where(any_pk(t.c.pk, "scope_pks", sorted(wanted)), cond)).scalars()
    return {int(pk) for pk in found}


def visible_id(conn: Connection, kind: ResourceKind, principal: Principal | None, res_id: str) -> bool:
    """Is the resource `res_id` of this kind inside the principal's scope (whether deleted or not)?"""
    cond = condition(kind, principal)
    if cond is None:
        return True
    t = kind.table
    return conn.execute(select(t.c.pk).where(t.c.id == res_id, cond).limit(1)).first() is not None


def require_visible(conn: Connection, kind: ResourceKind, principal: Principal, res_id: str, what: str) -> None:
    """404, as for a resource that does not exist, unless the resource is inside the scope: a user cannot tell an
    out-of-scope id from an unknown one."""
    if not visible_id(conn, kind, principal, res_id):
        raise not_found(f"{what} not found")


def require_written_inside(conn: Connection, kind: ResourceKind, principal: Principal, pk: int) -> None:
    """403 when a write puts the row outside the writer's scope (an officer enrolling a family in another village),
    checked in the writing transaction after the write, so that it rolls back."""
    cond = condition(kind, principal)
    if cond is None:
        return
    t = kind.table
    if conn.execute(select(t.c.pk).where(t.c.pk == pk, cond)).first() is None:
        raise forbidden(f"User '{principal.username}' may not write {kind.resource_type} data outside its "
                        "location scope")


def history_condition(kinds: list[ResourceKind], principal: Principal, kind_column: Any, id_column: Any) -> Any:
    """The condition on resource_version rows (`kind_column`, `id_column`) keeping the versions of resources inside
    the scope; None when nothing restricts."""
    parts = []
    restricted = False
    for kind in kinds:
        cond = condition(kind, principal)
        if cond is None:
            parts.append(kind_column == kind.name)
            continue
        restricted = True
        ids = select(DefaultCollation(kind.table.c.id)).where(cond).correlate(None)  # probes res_id's index
        parts.append(and_(kind_column == kind.name, id_column.in_(ids)))
    if not restricted:
        return None
    return or_(*parts) if parts else false()

