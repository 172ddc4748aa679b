"""New versions written as the previous stored body with a change applied, instead of a render.

A payment that activates a policy re-versions the Patients of its members (Patient.active is "has an active
policy", IG profile row 1), their Group (Group.active: a member has one) and the Invoice it pays. Rendering them
reads the insuree with its family, location names and code-list labels, the family's members, the invoice with
its lines — on SQLite inside the writer lock — to change one element each. Every version of every resource is
stored (resource_version), and every change of what a body shows re-versions it (a location renamed re-versions
its insurees, `location.mark_location_dependents`). So when a write changes nothing of a resource but some values
its kind knows how to write into a body (`ResourceKind.patchable`, `ResourceKind.patch_body`), the previous
version's body with those values written in is the body a render would give.

`WriteContext` records such changes (`versioned_update` of patchable columns, `mark_patch`); any other change of
the resource in the same write (`mark`, `update`) drops them and the flush renders it. The flush reads the stored
bodies of the versions before the new ones with its other reads (`stored_plan`), and renders the resource instead
when that version is not stored or the kind cannot apply the change. A write may read them beforehand
(`current_bodies` into `WriteContext.prefetched`: a payment on SQLite, outside the writer lock); a body whose
version is not the one just before the new version is not used.

HIFHIR_VERIFY_PATCHES=1 (the test suite sets it) renders every patched resource too and fails the write when the
two bodies differ: every test that re-versions a resource this way checks the patch against the render. A write
that builds a new resource's body itself instead of reading it back (a Patient's create) checks it the same way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, literal, select

from hifhir.store.fast import DriverQuery, Plan, any_pk, rows_together
from hifhir.store.tables import DefaultCollation
from hifhir.store.tables import resource_version as rv

if TYPE_CHECKING:
    from hifhir.fhir.kind import ResourceKind


def verifying() -> bool:
    return os.environ.get("HIFHIR_VERIFY_PATCHES") == "1"


def _stored_query(kind: ResourceKind, version: Any) -> DriverQuery:
    """(pk, version, body) of the stored `version` of each of the kind's rows `pks` (body NULL when there is none).
    One index probe per row, driven by the rows (a join lets SQLite start from every stored version of the type)."""
    t = kind.table
    body = (select(rv.c.body)
            .where(rv.c.res_type == literal(kind.resource_type), rv.c.res_id == DefaultCollation(t.c.id),
                   rv.c.version == version)
            .correlate(t).scalar_subquery())
    return DriverQuery(select(t.c.pk, version.label("version"), body.label("body")).where(any_pk(t.c.pk)))


@functools.cache
def _stored(kind: ResourceKind) -> DriverQuery:
    """The flush runs it after the version bumps: the version before the one being written."""
    return _stored_query(kind, kind.table.c[kind.version_column] - 1)


@functools.cache
def _current(kind: ResourceKind) -> DriverQuery:
    return _stored_query(kind, kind.table.c[kind.version_column])


def current_bodies(conn: Connection, wanted: Mapping[str, Iterable[int]]
                   ) -> dict[tuple[str, int], tuple[int, bytes | None]]:
    """(kind name, pk) → (version, body) of the current stored versions of the rows `wanted` names (kind name →
    pks): read before a write transaction, for `WriteContext.prefetched`."""
    from hifhir.fhir.registry import KINDS

    names = [name for name, pks in wanted.items() if pks]
    found = rows_together(conn, [(_current(KINDS[name]), {"pks": sorted(set(wanted[name]))}) for name in names])
    return {(name, int(r.pk)): (int(r.version), r.body) for name, rows in zip(names, found, strict=True)
            for r in rows}


def stored_plan(kind: ResourceKind, pks: list[int]) -> Plan[dict[int, tuple[int, bytes | None]]]:
    """pk → (version, body) of the stored versions before the new ones, as one read of the flush's first step."""
    rows, = yield [(_stored(kind), {"pks": pks})]
    return {int(r.pk): (int(r.version), r.body) for r in rows}


def patched(kind: ResourceKind, stored: tuple[int, bytes | None] | None, new_version: int,
            changes: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The body of `new_version` (without resourceType, id and meta): the stored one of the version before with the
    changes applied, or None when a render is needed (no such stored version, or a change the kind declines)."""
    if stored is None or stored[0] != new_version - 1 or stored[1] is None:
        return None
    body = content(stored[1])
    for change in changes:
        if not kind.patch_body(body, change):
            return None
    return body


def content(stored: bytes) -> dict[str, Any]:
    """A stored version's body without resourceType, id and meta, which the flush writes for each version."""
    body = orjson.loads(stored)
    for key in ("resourceType", "id", "meta"):
        body.pop(key, None)
    return body  # type: ignore[no-any-return]


def check_built(kind: ResourceKind, conn: Connection, pk: int, body: dict[str, Any]) -> None:
    """HIFHIR_VERIFY_PATCHES: a body a write built itself instead of reading the resource back (a new Patient, a
    ClaimResponse decided before it was stored) is the render of what it wrote."""
    if verifying():
        check(kind, pk, body, kind.render(conn, [pk])[pk])


def check(kind: ResourceKind, pk: int, body: dict[str, Any], rendered: dict[str, Any]) -> None:
    """HIFHIR_VERIFY_PATCHES: the patched body is the rendered one."""
    if body != rendered:
        raise AssertionError(f"{kind.name} {pk}: the patched body differs from its render\n"
                             f"patched:  {orjson.dumps(body).decode()}\nrendered: {orjson.dumps(rendered).decode()}")
