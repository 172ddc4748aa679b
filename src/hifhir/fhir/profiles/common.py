"""Pieces every profile mapping shares: ids and UUID identifiers, code-list lookups, address parts."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, select

from hifhir.fhir import patching
from hifhir.fhir.elements import identifier_value
from hifhir.fhir.errors import conflict
from hifhir.fhir.kind import ResourceKind, WriteContext, require
from hifhir.fhir.searchparams import SearchParam, column_ref, reference_param
from hifhir.store.fast import DriverQuery, Plan, any_pk, run_plan
from hifhir.store.tables import is_current, location
from hifhir.store.tables import resource_version as rv


def is_uuid(value: str | None) -> bool:
    if not value or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def resolve_new_id(ctx: WriteContext, resource: dict[str, Any], table: Table) -> tuple[str, str | None]:
    """(id, uuid) for a new entity. A client-supplied identifier[UUID] becomes the id of a POSTed resource,
    as openIMIS clients expect; a PUT keeps the URL id and records the UUID beside it."""
    rtype = resource["resourceType"]
    client_uuid = identifier_value(resource, "UUID")
    if client_uuid is not None:
        require(is_uuid(client_uuid), "identifier[UUID] must be a UUID", f"{rtype}.identifier")
        taken = ctx.conn.execute(select(table.c.pk).where(
            (table.c.uuid == client_uuid) | (table.c.id == client_uuid))).first()
        if taken is not None:
            raise conflict(f"identifier[UUID] {client_uuid} is already used", f"{rtype}.identifier")
    if ctx.id_from_client:
        return ctx.new_id, client_uuid or (ctx.new_id if is_uuid(ctx.new_id) else None)
    new_id = client_uuid or ctx.new_id
    return new_id, new_id


def uuid_for_update(ctx: WriteContext, resource: dict[str, Any], table: Table, current: Row) -> str | None:
    """identifier[UUID] on update: kept when absent; a changed value must be a UUID no other row uses."""
    rtype = resource["resourceType"]
    value = identifier_value(resource, "UUID")
    if value is None or value == current.uuid:
        return current.uuid
    require(is_uuid(value), "identifier[UUID] must be a UUID", f"{rtype}.identifier")
    taken = ctx.conn.execute(select(table.c.pk).where(
        ((table.c.uuid == value) | (table.c.id == value)) & (table.c.pk != current.pk))).first()
    if taken is not None:
        raise conflict(f"identifier[UUID] {value} is already used", f"{rtype}.identifier")
    return value


def uuid_of(row: Row) -> str | None:
    return row.uuid


@functools.cache
def _code_taken(table: Table, column: str) -> Any:
    t = table
    return select(t.c.pk).where(t.c[column] == bindparam("code"), is_current(t), t.c.pk != bindparam("pk")).limit(1)


def check_unique_code(conn: Connection, table: Table, column: str, code: str, current: Row | None,
                      what: str, expression: str) -> None:
    taken = conn.execute(_code_taken(table, column), {"code": code, "pk": -1 if current is None else current.pk})
    if taken.first() is not None:
        raise conflict(f"{what} {code} is already used", expression)


# Built once: aliases and statement construction cost more than running these queries.
_REGION, _DISTRICT, _WARD = location.alias("r"), location.alias("d"), location.alias("w")
_NAMED = (select(location.c.pk, location.c.id, location.c.name, location.c.type,
                 _REGION.c.name.label("region"), _DISTRICT.c.name.label("district"), _WARD.c.name.label("ward"))
          .select_from(location.outerjoin(_REGION, _REGION.c.pk == location.c.region_pk)
                       .outerjoin(_DISTRICT, _DISTRICT.c.pk == location.c.district_pk)
                       .outerjoin(_WARD, _WARD.c.pk == location.c.ward_pk)))
_LOCATION_NAMES = DriverQuery(_NAMED.where(any_pk(location.c.pk)))
_NAMED_LOCATION_BY_ID = DriverQuery(_NAMED.where(location.c.id == bindparam("id"), is_current(location)))
# Every Patient and Group write looks its village up: through the driver (store.fast), not SQLAlchemy's execute.
_LOCATION_BY_ID = DriverQuery(
    select(location.c.pk, location.c.type).where(location.c.id == bindparam("id"), is_current(location)))
_LOCATION_TYPE = select(location.c.type).where(location.c.pk == bindparam("pk"))
_LEVEL_NAMES = {"R": "region", "D": "district", "W": "ward", "V": "village"}


def location_names(conn: Connection, pks: set[int]) -> dict[int, Row]:
    """For each location pk: the row joined with its region, district and ward names, in one query."""
    return run_plan(conn, location_names_plan(pks))


def location_names_plan(pks: set[int]) -> Plan[dict[int, Row]]:
    if not pks:
        return {}
    rows, = yield [(_LOCATION_NAMES, {"pks": list(pks)})]
    return {row.pk: row for row in rows}


def _plain_location_id(ref: Any) -> str | None:
    """The id of a literal `Location/<id>` reference (the common case, looked up in one query), else None."""
    literal = ref.get("reference") if isinstance(ref, dict) else None
    if isinstance(literal, str) and literal.startswith("Location/") and literal.count("/") == 1:
        return literal[9:]
    return None


def location_of_level(ctx: WriteContext, ref: Any, level: str, expression: str) -> int:
    """Resolve a Location reference that must be of one level (V village, D district…)."""
    plain_id = _plain_location_id(ref)
    found = None
    if plain_id is not None:
        rows = _LOCATION_BY_ID.rows(ctx.conn, {"id": plain_id})
        found = rows[0] if rows else None
    if found is not None:
        pk, actual = found
    else:
        _, pk = ctx.resolve(ref, ["Location"], expression)
        actual = ctx.conn.execute(_LOCATION_TYPE, {"pk": pk}).scalar_one()
    require(actual == level, f"The location must be a {_LEVEL_NAMES[level]}, not a {_LEVEL_NAMES[actual]}",
            expression)
    return int(pk)


def named_location_of_level(ctx: WriteContext, ref: Any, level: str, expression: str) -> tuple[int, Row | None]:
    """`location_of_level`, with the location's names as `location_names` gives them (None when the reference is
    not a literal `Location/id`): what a write needs to render the address itself."""
    plain_id = _plain_location_id(ref)
    if plain_id is not None:
        rows = _NAMED_LOCATION_BY_ID.rows(ctx.conn, {"id": plain_id})
        if rows and rows[0].type == level:
            return int(rows[0].pk), rows[0]
    return location_of_level(ctx, ref, level, expression), None  # the other forms, and the errors


def configured_code(ctx: WriteContext, list_name: str, concept: dict[str, Any] | None,
                    expression: str) -> str | None:
    """The code of a CodeableConcept bound to an openIMIS code list; unknown codes are a 422."""
    found = configured_concept(ctx, list_name, concept, expression)
    return None if found is None else found[0]


def configured_concept(ctx: WriteContext, list_name: str, concept: dict[str, Any] | None,
                       expression: str) -> tuple[str, str] | None:
    """`configured_code` with the code's display in the list: (code, display)."""
    from hifhir.fhir.elements import first_code
    from hifhir.store.codelists import code_display

    code = first_code(concept)
    if code is None:
        return None
    display = code_display(ctx.conn, list_name, code)
    require(display is not None, f"Code '{code}' is not in the configured list {list_name}", expression)
    assert display is not None
    return code, display


def concept_from_list(list_name: str, code: str | None, labels: dict[str, str]) -> dict[str, Any] | None:
    from hifhir.fhir.elements import ig_concept

    if code is None:
        return None
    return ig_concept(list_name, code, labels.get(code))


def address_location_param(column: Any) -> SearchParam:
    """`address-location`: the Location an address points at (extension address-location-reference), so that
    `_include`, chains and `_has` can follow it like any other reference."""
    return reference_param("address-location", "Location", column_ref(column, "location"),
                           doc="The location of the address (extension address-location-reference)")


def stored_bodies(conn: Connection, kind: ResourceKind, pks: list[int]) -> dict[int, dict[str, Any]]:
    """The latest stored version of resources whose content is not all in columns (an eligibility enquiry, a
    submitted Claim) — what a render outside their creating write can only repeat — without resourceType, id and
    meta, by pk; entities with no stored version are left out (the caller decides what that means)."""
    t = kind.table
    ids = {r.id: r.pk for r in conn.execute(select(t.c.pk, t.c.id).where(t.c.pk.in_(pks)))}
    latest: dict[str, tuple[int, bytes]] = {}
    for r in conn.execute(select(rv.c.res_id, rv.c.version, rv.c.body).where(
            rv.c.res_type == kind.resource_type, rv.c.res_id.in_(list(ids)), rv.c.body.is_not(None))):
        if r.res_id not in latest or r.version > latest[r.res_id][0]:
            latest[r.res_id] = (r.version, r.body)
    return {ids[res_id]: patching.content(body) for res_id, (_, body) in latest.items()}
