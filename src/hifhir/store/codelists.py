"""openIMIS code lists kept as editable data, seeded from the IG CodeSystems of the same ids."""

from __future__ import annotations

import functools
from pathlib import Path

import orjson
from sqlalchemy import Connection, bindparam, insert, select

from hifhir.store.tables import code_list_entry

TERMINOLOGY = Path(__file__).resolve().parent.parent / "data" / "ig" / "terminology"

# The lists openIMIS keeps as configuration tables (domain §2.3); the IG CodeSystem ids name them.
CONFIGURABLE_LISTS = (
    "patient-education-level",
    "patient-profession",
    "patient-identification-type",
    "patient-contact-relationship",
    "group-type",
    "group-confirmation-type",
    "organization-hf-legal-form",
    "organization-hf-level",
    "organization-ph-legal-form",
    "organization-ph-activity",
)


@functools.cache
def ig_concepts(cs_id: str) -> list[tuple[str, str]]:
    cs = orjson.loads((TERMINOLOGY / f"CodeSystem-{cs_id}.json").read_bytes())
    return [(c["code"], c.get("display", c["code"])) for c in cs.get("concept", [])]


def seed_code_lists(conn: Connection) -> int:
    """Insert the IG's codes for lists that are still empty; returns how many entries were added."""
    existing = {row.list_name for row in conn.execute(select(code_list_entry.c.list_name).distinct())}
    rows = []
    for list_name in CONFIGURABLE_LISTS:
        if list_name in existing:
            continue
        for order, (code, display) in enumerate(ig_concepts(list_name)):
            rows.append({"list_name": list_name, "code": code, "display": display, "sort_order": order})
    if rows:
        conn.execute(insert(code_list_entry), rows)
    return len(rows)


_CODE_DISPLAY = select(code_list_entry.c.display).where(
    code_list_entry.c.list_name == bindparam("list_name"), code_list_entry.c.code == bindparam("code"),
    code_list_entry.c.active.is_(True))


def code_display(conn: Connection, list_name: str, code: str) -> str | None:
    """The display of an active code, or None when the code is not configured."""
    return conn.execute(_CODE_DISPLAY, {"list_name": list_name, "code": code}).scalar()


_DISPLAYS = select(code_list_entry.c.list_name, code_list_entry.c.code, code_list_entry.c.display).where(
    code_list_entry.c.list_name.in_(bindparam("names", expanding=True)))


def displays_of(conn: Connection, list_names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Code → display for several lists in one query (read live: the lists are editable configuration)."""
    out: dict[str, dict[str, str]] = {name: {} for name in list_names}
    for row in conn.execute(_DISPLAYS, {"names": list(list_names)}):
        out[row.list_name][row.code] = row.display
    return out
