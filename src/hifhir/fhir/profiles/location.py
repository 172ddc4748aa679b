"""OpenIMISLocation ↔ the R → D → W → V location hierarchy (domain §2.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, or_, select, update

from hifhir.auth import scope as location_scope
from hifhir.fhir.elements import coding, first_code, identifier_value, identifiers, reference
from hifhir.fhir.kind import CS, ResourceKind, WriteContext, require
from hifhir.fhir.profiles.common import resolve_new_id, uuid_for_update, uuid_of
from hifhir.fhir.search import common_params, common_sorts
from hifhir.fhir.searchparams import (
    SortKey,
    column_ref,
    normalise_text,
    reference_param,
    string_param,
    subquery_string_param,
    token_param,
)
from hifhir.store.tables import is_current, location

LEVELS = {"R": "Region", "D": "District", "W": "Municipality/Ward", "V": "City/Village"}
PARENT_LEVEL = {"R": None, "D": "R", "W": "D", "V": "W"}


_PARENT = location.alias("parent")
_RENDER = (
    select(location, _PARENT.c.id.label("parent_id"))
    .select_from(location.outerjoin(_PARENT, _PARENT.c.pk == location.c.parent_pk))
    .where(location.c.pk.in_(bindparam("pks", expanding=True)))
)


class LocationKind(ResourceKind):
    resource_type = "Location"
    name = "location"
    profile_id = "openimis-location"
    table = location
    scope = location_scope.LOCATION

    def __init__(self) -> None:
        t = location
        self.search_params = {
            **common_params(self),
            "name": string_param("name", t.c.name_norm, raw_columns=(t.c.name,), doc="Location name"),
            "type": token_param("type", t.c.type, codes={c: c for c in LEVELS},
                                systems=frozenset({CS + "location-type"}),
                                doc="Level: R region, D district, W ward/municipality, V village"),
            "partof": reference_param("partof", "Location", column_ref(t.c.parent_pk, "location"),
                                      doc="The parent location"),
            "address": subquery_string_param(
                "address", t.c.pk,
                lambda match: select(location.c.pk).where(or_(
                    match(location.c.name_norm),
                    location.c.region_pk.in_(select(location.c.pk).where(match(location.c.name_norm))),
                    location.c.district_pk.in_(select(location.c.pk).where(match(location.c.name_norm))),
                    location.c.ward_pk.in_(select(location.c.pk).where(match(location.c.name_norm))),
                )),
                doc="Name of the location or of any of its ancestors"),
        }
        self.search_params["physical-type"] = self.search_params["type"]
        self.sort_params = {**common_sorts(self), "name": SortKey(t.c.name_norm), "type": SortKey(t.c.type)}

    def render(self, conn: Connection, pks: list[int]) -> dict[int, dict[str, Any]]:
        rows = conn.execute(_RENDER, {"pks": pks}).all()
        out = {}
        for row in rows:
            res: dict[str, Any] = {
                "identifier": identifiers(row.code, uuid_of(row)),
                "status": "active",
                "name": row.name,
                "mode": "instance",
                "physicalType": {"coding": [coding(CS + "location-type", row.type, LEVELS[row.type])]},
            }
            if row.parent_id is not None:
                res["partOf"] = reference("Location", row.parent_id)
            out[row.pk] = res
        return out

    def write(self, ctx: WriteContext, resource: dict[str, Any], current: Row | None) -> int:
        conn = ctx.conn
        code = identifier_value(resource, "Code")
        require(bool(code) and len(code) <= 8,
                "Location code (identifier Code) is required, at most 8 characters", "Location.identifier")
        level = first_code(resource.get("physicalType"))
        require(level in LEVELS, "physicalType must be R, D, W or V", "Location.physicalType")
        name = resource.get("name") or ""
        require(0 < len(name) <= 50, "name is required, at most 50 characters", "Location.name")
        self._check_code_free(conn, code, current)

        parent_pk = None
        ancestors: dict[str, int | None] = {"region_pk": None, "district_pk": None, "ward_pk": None}
        wanted_parent = PARENT_LEVEL[level]
        if wanted_parent is None:
            require("partOf" not in resource, "A region has no parent (partOf)", "Location.partOf")
        else:
            require("partOf" in resource, f"A {LEVELS[level]} needs partOf → a {LEVELS[wanted_parent]}",
                    "Location.partOf")
            _, parent_pk = ctx.resolve(resource["partOf"], ["Location"], "Location.partOf")
            prow = conn.execute(select(location).where(location.c.pk == parent_pk)).one()
            require(prow.type == wanted_parent,
                    f"A {LEVELS[level]} must be part of a {LEVELS[wanted_parent]}, not a {LEVELS[prow.type]}",
                    "Location.partOf")
            ancestors = {"region_pk": prow.region_pk, "district_pk": prow.district_pk,
                         "ward_pk": prow.ward_pk}
            ancestors[{"R": "region_pk", "D": "district_pk", "W": "ward_pk"}[prow.type]] = prow.pk

        values = {"code": code, "name": name, "name_norm": normalise_text(name), "type": level,
                  "parent_pk": parent_pk, **ancestors}
        if current is None:
            values["id"], values["uuid"] = resolve_new_id(ctx, resource, location)
            return ctx.insert(location, values)

        if current.type != level:
            has_children = conn.execute(
                select(location.c.pk).where(location.c.parent_pk == current.pk, is_current(location))
                .limit(1)).first()
            require(has_children is None, "Cannot change the level of a location that has sub-locations",
                    "Location.physicalType")
            # What attaches to a location attaches to one level (HF → district, insuree/family → village…).
            used = location_in_use(conn, current.pk)
            require(used is None, f"Cannot change the level of location {current.code}: it is used by {used}",
                    "Location.physicalType")
        require(parent_pk != current.pk, "A location cannot be its own parent", "Location.partOf")
        values["uuid"] = uuid_for_update(ctx, resource, location, current)
        ctx.update(location, current.pk, values)
        if (parent_pk, ancestors) != (current.parent_pk, {k: current._mapping[k] for k in ancestors}):
            self._refresh_descendants(conn, current.pk)
        if name != current.name or parent_pk != current.parent_pk:
            mark_location_dependents(ctx, current.pk)
        return int(current.pk)

    def delete(self, ctx: WriteContext, current: Row) -> None:
        child = ctx.conn.execute(
            select(location.c.code)
            .where(location.c.parent_pk == current.pk, is_current(location)).limit(1)
        ).first()
        require(child is None,
                f"Location {current.code} still has sub-locations (e.g. {child.code if child else ''})")
        used = location_in_use(ctx.conn, current.pk)
        require(used is None, f"Location {current.code} is still used by {used}")

    @staticmethod
    def _check_code_free(conn: Connection, code: str, current: Row | None) -> None:
        q = select(location.c.pk).where(location.c.code == code, is_current(location))
        if current is not None:
            q = q.where(location.c.pk != current.pk)
        from hifhir.fhir.errors import conflict

        if conn.execute(q).first() is not None:
            raise conflict(f"Location code {code} is already used", "Location.identifier")

    @staticmethod
    def _refresh_descendants(conn: Connection, pk: int) -> None:
        """Re-derive the denormalised ancestor columns below a moved location (at most 3 levels)."""
        frontier = [pk]
        while frontier:
            children = conn.execute(select(location.c.pk, location.c.parent_pk).where(
                location.c.parent_pk.in_(frontier))).all()
            for child in children:
                prow = conn.execute(select(location).where(location.c.pk == child.parent_pk)).one()
                anc = {"region_pk": prow.region_pk, "district_pk": prow.district_pk, "ward_pk": prow.ward_pk}
                level_col = {"R": "region_pk", "D": "district_pk", "W": "ward_pk", "V": "ward_pk"}
                anc[level_col[prow.type]] = prow.pk
                conn.execute(update(location).where(location.c.pk == child.pk).values(**anc))
            frontier = [c.pk for c in children]


@dataclass(frozen=True, slots=True)
class LocationUser:
    """A register whose rows sit in a location: deleting that location is refused while a current row uses it,
    and renaming or moving it re-renders those rows (their FHIR addresses show the location names)."""

    kind_name: str
    table: Table
    location_column: str
    code_column: str
    label: str

    def in_use(self, conn: Connection, location_pk: int) -> str | None:
        t = self.table
        row = conn.execute(select(t.c[self.code_column]).where(
            t.c[self.location_column] == location_pk, is_current(t)).limit(1)).first()
        return None if row is None else f"{self.label} {row[0]}"

    def mark_in(self, ctx: WriteContext, subtree: Any) -> None:
        t = self.table
        for (pk,) in ctx.conn.execute(select(t.c.pk).where(
                t.c[self.location_column].in_(subtree), is_current(t))).all():
            ctx.mark(self.kind_name, int(pk))


# Filled by the modules of the registers that reference locations (so this module imports none of them).
LOCATION_USERS: list[LocationUser] = []


def register_location_user(kind_name: str, table: Table, location_column: str, code_column: str,
                           label: str) -> None:
    LOCATION_USERS.append(LocationUser(kind_name, table, location_column, code_column, label))


def location_in_use(conn: Connection, location_pk: int) -> str | None:
    for user in LOCATION_USERS:
        used = user.in_use(conn, location_pk)
        if used is not None:
            return used
    return None


def mark_location_dependents(ctx: WriteContext, location_pk: int) -> None:
    subtree = select(location.c.pk).where(or_(
        location.c.pk == location_pk, location.c.region_pk == location_pk,
        location.c.district_pk == location_pk, location.c.ward_pk == location_pk))
    for user in LOCATION_USERS:
        user.mark_in(ctx, subtree)
