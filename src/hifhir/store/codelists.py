"""openIMIS code lists kept as editable data, seeded from the IG CodeSystems of the same ids.

A list is the rows of `code_list_entry` with one `list_name` (the IG CodeSystem id). Entries are never deleted:
a code dropped from a list is deactivated, so data already coded with it keeps its meaning (renders still find
its display) while new data can no longer use it. Every change stamps the entry's `last_updated` with a value
strictly greater than the list's previous newest stamp, so `max(last_updated)` of a list — the last entry of the
`(list_name, last_updated)` index, one index probe whatever the list's size — changes whenever the list does; the
terminology cache revalidates on it. (A count would also catch rows deleted behind the application's back, but
costs a scan of the list's index entries — 0.1-0.2 ms for the 1,910 diagnoses on every request; lists are only
changed through the functions below, which never delete.)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import Connection, bindparam, func, insert, literal_column, select, update

from hifhir.store.fast import DriverQuery
from hifhir.store.tables import code_list_entry

T = TypeVar("T")

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
# The diagnoses (domain §2.10, tblICDCodes): configured per scheme, loaded with the demo data (1,910 ICD-10 codes).
DIAGNOSIS_LIST = "diagnosis-ICD10-level1"
EDITABLE_LISTS = (*CONFIGURABLE_LISTS, DIAGNOSIS_LIST)

CODE_MAX = 16
DISPLAY_MAX = 255


class CodeListError(ValueError):
    """An edit a list cannot take; `index` is the position of the offending concept in a replacement, if any."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


@dataclass(frozen=True, slots=True)
class Entry:
    code: str
    display: str
    sort_order: int
    active: bool
    last_updated: int


@functools.cache
def ig_concepts(cs_id: str) -> list[tuple[str, str]]:
    cs = orjson.loads((TERMINOLOGY / f"CodeSystem-{cs_id}.json").read_bytes())
    return [(c["code"], c.get("display", c["code"])) for c in cs.get("concept", [])]


def _now_us() -> int:
    return time.time_ns() // 1000


def seed_code_lists(conn: Connection) -> int:
    """Insert the IG's codes for lists that are still empty; returns how many entries were added."""
    existing = {row.list_name for row in conn.execute(select(code_list_entry.c.list_name).distinct())}
    now = _now_us()
    rows = []
    for list_name in CONFIGURABLE_LISTS:
        if list_name in existing:
            continue
        for order, (code, display) in enumerate(ig_concepts(list_name)):
            rows.append({"list_name": list_name, "code": code, "display": display, "sort_order": order,
                         "last_updated": now})
    if rows:
        conn.execute(insert(code_list_entry), rows)
    return len(rows)


def seed_diagnoses(conn: Connection) -> int:
    """Load the IG's example diagnosis list (1,910 ICD-10 three-character categories) when the scheme has no
    diagnosis yet; returns how many entries were added (0 when the list was already configured)."""
    if conn.execute(select(code_list_entry.c.pk).where(code_list_entry.c.list_name == DIAGNOSIS_LIST)
                    .limit(1)).first() is not None:
        return 0
    now = _now_us()
    rows = [{"list_name": DIAGNOSIS_LIST, "code": code, "display": display[:DISPLAY_MAX], "sort_order": order,
             "last_updated": now} for order, (code, display) in enumerate(ig_concepts(DIAGNOSIS_LIST))]
    conn.execute(insert(code_list_entry), rows)
    return len(rows)


# --- reading -----------------------------------------------------------------------------------------------

_CODE_DISPLAY = select(code_list_entry.c.display).where(
    code_list_entry.c.list_name == bindparam("list_name"), code_list_entry.c.code == bindparam("code"),
    code_list_entry.c.active.is_(True))


def code_display(conn: Connection, list_name: str, code: str) -> str | None:
    """The display of an active code, or None when the code is not configured."""
    return conn.execute(_CODE_DISPLAY, {"list_name": list_name, "code": code}).scalar()


@functools.cache
def _displays(list_names: tuple[str, ...]) -> DriverQuery:
    # One prebuilt statement per set of lists (renders ask for a few fixed sets, e.g. at every Group re-version).
    # The names are written into the statement (server constants, not input): as parameters, PostgreSQL planned
    # the statement anew at every execution (the lists' sizes differ, so a custom plan looks cheaper).
    names = [literal_column("'" + name.replace("'", "''") + "'") for name in list_names]
    return DriverQuery(select(code_list_entry.c.list_name, code_list_entry.c.code, code_list_entry.c.display).where(
        code_list_entry.c.list_name.in_(names)))


def displays_of(conn: Connection, list_names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Code → display for several lists in one query (read live: the lists are editable configuration)."""
    return displays_from(list_names, _displays(tuple(list_names)).rows(conn, {}))


def displays_read(list_names: tuple[str, ...]) -> tuple[DriverQuery, dict[str, Any]]:
    """`displays_of`'s statement, to send with other reads (`store.fast.rows_together`); `displays_from` reads it."""
    return _displays(tuple(list_names)), {}


def displays_from(list_names: tuple[str, ...], rows: Sequence[Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {name: {} for name in list_names}
    for row in rows:
        out[row.list_name][row.code] = row.display
    return out


# The change marker of one list: the newest stamp, one probe of the (list_name, last_updated) index.
LIST_CHANGED = select(func.max(code_list_entry.c.last_updated)).where(
    code_list_entry.c.list_name == bindparam("list_name"))

_ENTRIES = (
    select(code_list_entry.c.code, code_list_entry.c.display, code_list_entry.c.sort_order,
           code_list_entry.c.active, code_list_entry.c.last_updated)
    .where(code_list_entry.c.list_name == bindparam("list_name"))
    .order_by(code_list_entry.c.sort_order, code_list_entry.c.code)
)


# The same as a driver-level read, for callers that batch it with others (`store.fast.rows_together`). With
# statistics PostgreSQL answers it from the end of the (list_name, last_updated) index; without (a freshly loaded
# database) it aggregates the list's index entries, 0.55 ms for the 1,910 diagnoses.
LIST_CHANGED_READ = DriverQuery(LIST_CHANGED)


class ListSnapshot:
    """A code list's entries as of its change marker (their newest `last_updated`), and what callers derive from
    them once per snapshot (`derived`): the active codes, the FHIR CodeSystem view."""

    __slots__ = ("_derived", "changed_at", "entries")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = tuple(entries)
        self.changed_at = max((e.last_updated for e in entries), default=0)
        self._derived: dict[str, Any] = {}

    @property
    def active_codes(self) -> frozenset[str]:
        return self.derived("active codes", lambda: frozenset(e.code for e in self.entries if e.active))

    def derived(self, key: str, build: Callable[[], T]) -> T:
        """`build()`, made once per snapshot and `key` (two requests may both build it: the same value)."""
        if key not in self._derived:
            self._derived[key] = build()
        return cast(T, self._derived[key])


class ListSnapshots:
    """The newest snapshot of each code list, per database, kept while the list's change marker (`LIST_CHANGED`,
    one index probe, which callers read with their other reads) stays the same. The claims' diagnosis check takes
    its codes from here: joining the claim's diagnoses with the list instead let PostgreSQL without statistics walk
    the whole list and fetch the claim for each of its 1,910 codes (3.4–4.1 ms a claim; the marker alone costs it
    0.55 ms there, and a claim took 11.6 ms in-process instead of 13.2)."""

    def __init__(self) -> None:
        self._lists: dict[tuple[int, str], ListSnapshot] = {}

    def at(self, conn: Connection, list_name: str, changed_at: int) -> ListSnapshot:
        """The list as of the marker `changed_at` the caller read in its transaction (or a newer one)."""
        key = (id(conn.engine.pool), list_name)  # the reader engine shares its pool with the writer's
        hit = self._lists.get(key)
        if hit is not None and hit.changed_at == changed_at:
            return hit
        # Marker and entries from one statement (one snapshot): a change committed after the caller's read of the
        # marker is cached under its own marker, and the next caller's marker finds it.
        snapshot = self._lists[key] = ListSnapshot(list_entries(conn, list_name))
        return snapshot

    def current(self, conn: Connection, list_name: str) -> ListSnapshot:
        """The list as of now (reads the marker first)."""
        return self.at(conn, list_name, list_changed_at(conn, list_name))


snapshots = ListSnapshots()


def list_changed_at(conn: Connection, list_name: str) -> int:
    """The list's newest change (µs; 0 for an empty list): it moves whenever the list changes."""
    return int(LIST_CHANGED_READ.rows(conn, {"list_name": list_name})[0][0] or 0)


def list_entries(conn: Connection, list_name: str) -> list[Entry]:
    """Every entry of a list, active or not, in display order (sort order, then code)."""
    return [Entry(r.code, r.display, r.sort_order, bool(r.active), int(r.last_updated))
            for r in conn.execute(_ENTRIES, {"list_name": list_name})]


# --- editing -----------------------------------------------------------------------------------------------


def check_editable(list_name: str) -> None:
    if list_name not in EDITABLE_LISTS:
        raise CodeListError(f"'{list_name}' is not an editable code list (editable: {', '.join(EDITABLE_LISTS)})")


def check_concept(code: object, display: object, index: int | None = None) -> tuple[str, str]:
    """A code (1-16 characters, no outer or repeated spaces: the FHIR `code` type) and a display (1-255)."""
    if not isinstance(code, str) or not code or code != code.strip() or "  " in code or len(code) > CODE_MAX:
        raise CodeListError(f"A code must be 1-{CODE_MAX} characters without leading, trailing or double spaces"
                            f" (got {str(code)[:40]!r})", index, "code")
    if not isinstance(display, str) or not display.strip() or len(display) > DISPLAY_MAX:
        raise CodeListError(f"The display of code {code!r} must be 1-{DISPLAY_MAX} characters", index, "display")
    return code, display


def _stamp(conn: Connection, list_name: str) -> int:
    """A change time strictly after the list's newest one, so the list's change marker always moves (even when
    the clock steps back or two edits fall in the same microsecond)."""
    return max(_now_us(), list_changed_at(conn, list_name) + 1)


def _current(conn: Connection, list_name: str, lock: bool) -> dict[str, Entry]:
    stmt = select(code_list_entry).where(code_list_entry.c.list_name == list_name)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return {r.code: Entry(r.code, r.display, r.sort_order, bool(r.active), int(r.last_updated))
            for r in conn.execute(stmt)}


_UPDATE = (update(code_list_entry)
           .where(code_list_entry.c.list_name == bindparam("b_list"), code_list_entry.c.code == bindparam("b_code"))
           .values(display=bindparam("display"), sort_order=bindparam("sort_order"), active=bindparam("active"),
                   last_updated=bindparam("last_updated")))


def set_code(conn: Connection, list_name: str, code: str, display: str, sort_order: int | None = None) -> str:
    """Add a code, or change the display (and optionally the position) of an existing one, reactivating it.
    Returns "added", "updated", "reactivated" or "unchanged"."""
    check_editable(list_name)
    code, display = check_concept(code, display)
    existing = _current(conn, list_name, lock=True)
    entry = existing.get(code)
    if entry is None:
        order = sort_order if sort_order is not None else max((e.sort_order for e in existing.values()),
                                                              default=-1) + 1
        conn.execute(insert(code_list_entry), {"list_name": list_name, "code": code, "display": display,
                                               "sort_order": order, "active": True,
                                               "last_updated": _stamp(conn, list_name)})
        return "added"
    order = entry.sort_order if sort_order is None else sort_order
    if entry.display == display and entry.sort_order == order and entry.active:
        return "unchanged"
    conn.execute(_UPDATE, [{"b_list": list_name, "b_code": code, "display": display, "sort_order": order,
                            "active": True, "last_updated": _stamp(conn, list_name)}])
    return "updated" if entry.active else "reactivated"


def add_code(conn: Connection, list_name: str, code: str, display: str) -> None:
    """Add a new code at the end of the list; a code the list already has (even inactive) is an error."""
    check_editable(list_name)
    check_concept(code, display)
    if code in _current(conn, list_name, lock=True):
        raise CodeListError(f"Code {code!r} is already in {list_name} (use set_code to change or reactivate it)")
    set_code(conn, list_name, code, display)


def update_code(conn: Connection, list_name: str, code: str, display: str) -> None:
    """Change the display of a code the list has (reactivating it if it was deactivated)."""
    check_editable(list_name)
    if code not in _current(conn, list_name, lock=True):
        raise CodeListError(f"Code {code!r} is not in {list_name}")
    set_code(conn, list_name, code, display)


def deactivate_code(conn: Connection, list_name: str, code: str) -> bool:
    """Withdraw a code from new use (existing data keeps it); returns False when it was already inactive."""
    check_editable(list_name)
    entry = _current(conn, list_name, lock=True).get(code)
    if entry is None:
        raise CodeListError(f"Code {code!r} is not in {list_name}")
    if not entry.active:
        return False
    conn.execute(_UPDATE, [{"b_list": list_name, "b_code": code, "display": entry.display,
                            "sort_order": entry.sort_order, "active": False,
                            "last_updated": _stamp(conn, list_name)}])
    return True


@dataclass(frozen=True, slots=True)
class ReplaceResult:
    added: int
    updated: int
    reactivated: int
    deactivated: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.reactivated or self.deactivated)


def replace_codes(conn: Connection, list_name: str, concepts: Iterable[tuple[str, str]]) -> ReplaceResult:
    """Make the list's active codes exactly `concepts` (code, display), in that order.

    Codes left out are deactivated, not deleted (existing data keeps its meaning); codes given again are
    reactivated. The whole replacement is checked first (code and display lengths, duplicates): a bad concept
    changes nothing. Only entries that really change get a new `last_updated`."""
    check_editable(list_name)
    wanted: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, (code, display) in enumerate(concepts):
        code, display = check_concept(code, display, index)
        if code in seen:
            raise CodeListError(f"Code {code!r} appears twice (concepts {seen[code]} and {index})", index, "code")
        seen[code] = index
        wanted.append((code, display))
    existing = _current(conn, list_name, lock=True)
    stamp = _stamp(conn, list_name)
    inserts: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    added = updated = reactivated = deactivated = 0
    for order, (code, display) in enumerate(wanted):
        entry = existing.get(code)
        if entry is None:
            inserts.append({"list_name": list_name, "code": code, "display": display, "sort_order": order,
                            "active": True, "last_updated": stamp})
            added += 1
        elif not entry.active or entry.display != display or entry.sort_order != order:
            updates.append({"b_list": list_name, "b_code": code, "display": display, "sort_order": order,
                            "active": True, "last_updated": stamp})
            if entry.active:
                updated += 1
            else:
                reactivated += 1
    for code, entry in existing.items():
        if entry.active and code not in seen:
            updates.append({"b_list": list_name, "b_code": code, "display": entry.display,
                            "sort_order": entry.sort_order, "active": False, "last_updated": stamp})
            deactivated += 1
    if inserts:
        conn.execute(insert(code_list_entry), inserts)
    if updates:
        conn.execute(_UPDATE, updates)
    return ReplaceResult(added, updated, reactivated, deactivated)
