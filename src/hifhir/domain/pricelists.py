"""Price lists (domain §2.13): which items and services a health facility may claim, and at which price.

A price list is a header (`price_list`: kind item|service, unique name among current lists, date, optional
region/district) with lines (`price_list_item` / `price_list_service`: one medical item or service each, with an
optional `price_override`). A facility uses at most one items list and one services list
(`health_facility.item_price_list_pk` / `service_price_list_pk`). The effective price of a line is its override
when set, else the item's or service's own (scheme) price. Deleted items/services and deleted lists count as
absent everywhere here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection, Table, delete, insert, select, update

from hifhir.store.tables import (
    health_facility,
    is_current,
    medical_item,
    medical_service,
    price_list,
    price_list_item,
    price_list_service,
)

PriceKind = Literal["item", "service"]
KINDS: tuple[PriceKind, ...] = ("item", "service")
NAME_MAX = 100


class PriceListError(ValueError):
    """A price list change that breaks a rule (unknown codes, duplicate name, negative price...)."""


@dataclass(frozen=True, slots=True)
class PriceLine:
    """One line of a price list as a facility (or a claim check) sees it."""

    code: str
    name: str
    price: Decimal  # effective: the override when set, else the item's or service's price
    override: Decimal | None
    list_id: str
    list_name: str
    list_date: date


@dataclass(frozen=True, slots=True)
class _Tables:
    lines: Table
    target: Table  # medical_item | medical_service
    target_pk: str  # the line column pointing at it
    hf_column: str  # the health_facility column pointing at the list


_TABLES: dict[str, _Tables] = {
    "item": _Tables(price_list_item, medical_item, "item_pk", "item_price_list_pk"),
    "service": _Tables(price_list_service, medical_service, "service_pk", "service_price_list_pk"),
}


def _tables(kind: str) -> _Tables:
    found = _TABLES.get(kind)
    if found is None:
        raise PriceListError(f"A price list is of kind 'item' or 'service', not {kind!r}")
    return found


def _lines_query(kind: str) -> Any:
    t = _tables(kind)
    target, lines = t.target, t.lines
    return (
        select(target.c.code, target.c.name, target.c.price, lines.c.price_override,
               price_list.c.id.label("list_id"), price_list.c.name.label("list_name"), price_list.c.date_pl)
        .select_from(lines.join(price_list, price_list.c.pk == lines.c.price_list_pk)
                     .join(target, target.c.pk == lines.c[t.target_pk]))
        .where(is_current(price_list), is_current(target))
    )


def _line(row: Any) -> PriceLine:
    override = row.price_override
    return PriceLine(row.code, row.name, override if override is not None else row.price, override,
                     row.list_id, row.list_name, row.date_pl)


def facility_price_lines(conn: Connection, hf_pk: int, kind: PriceKind) -> list[PriceLine]:
    """The lines of the facility's items or services list (empty when it has none), by code."""
    t = _tables(kind)
    stmt = (_lines_query(kind)
            .join(health_facility, health_facility.c[t.hf_column] == price_list.c.pk)
            .where(health_facility.c.pk == hf_pk)
            .order_by(t.target.c.code))
    return [_line(row) for row in conn.execute(stmt)]


def facility_prices(conn: Connection, hf_pk: int, kind: PriceKind) -> dict[str, Decimal]:
    """Code → effective price of everything the facility may claim of this kind (claim check 2, "not in price
    list", is `code not in facility_prices(...)`)."""
    return {line.code: line.price for line in facility_price_lines(conn, hf_pk, kind)}


def all_price_lines(conn: Connection, kind: PriceKind) -> list[PriceLine]:
    """Every line of every current list of this kind (an item on two lists appears twice), by list then code."""
    t = _tables(kind)
    stmt = _lines_query(kind).order_by(price_list.c.name, price_list.c.pk, t.target.c.code)
    return [_line(row) for row in conn.execute(stmt)]


# --- editing -----------------------------------------------------------------------------------------------


def _now_us() -> int:
    return time.time_ns() // 1000


def _line_rows(conn: Connection, kind: PriceKind, price_list_pk: int,
               lines: Mapping[str, Decimal | int | str | None]) -> list[dict[str, Any]]:
    """Resolve item/service codes to current entities; unknown codes or negative prices change nothing."""
    t = _tables(kind)
    codes = list(lines)
    found: dict[str, int] = {}
    for start in range(0, len(codes), 500):
        chunk = codes[start:start + 500]
        found.update((row.code, int(row.pk)) for row in conn.execute(
            select(t.target.c.code, t.target.c.pk).where(t.target.c.code.in_(chunk), is_current(t.target))))
    unknown = [c for c in codes if c not in found]
    if unknown:
        raise PriceListError(f"No current medical {kind} has code(s) {', '.join(sorted(unknown)[:20])}")
    rows = []
    for code, override in lines.items():
        price = None if override is None else Decimal(str(override))
        if price is not None and (not price.is_finite() or price < 0):
            raise PriceListError(f"The price of {kind} {code} must be a non-negative amount, not {override}")
        rows.append({"price_list_pk": price_list_pk, t.target_pk: found[code], "price_override": price})
    return rows


def create_price_list(
    conn: Connection,
    kind: PriceKind,
    name: str,
    date_pl: date,
    lines: Mapping[str, Decimal | int | str | None],
    *,
    location_pk: int | None = None,
    list_id: str | None = None,
) -> int:
    """A new price list with its lines (item/service code → price override, None for the scheme price); returns
    its pk. The name must be unique among the current lists of the kind."""
    _tables(kind)
    if not name or len(name) > NAME_MAX:
        raise PriceListError(f"A price list name is 1-{NAME_MAX} characters")
    taken = conn.execute(select(price_list.c.pk).where(
        price_list.c.kind == kind, price_list.c.name == name, is_current(price_list))).first()
    if taken is not None:
        raise PriceListError(f"A current {kind} price list is already named {name!r}")
    pk = int(conn.execute(insert(price_list).values(
        id=list_id or str(uuid.uuid4()), kind=kind, name=name, date_pl=date_pl, location_pk=location_pk,
        last_updated=_now_us())).inserted_primary_key[0])
    rows = _line_rows(conn, kind, pk, lines)
    if rows:
        conn.execute(insert(_tables(kind).lines), rows)
    return pk


def _kind_of(conn: Connection, price_list_pk: int) -> PriceKind:
    kind = conn.execute(select(price_list.c.kind).where(price_list.c.pk == price_list_pk,
                                                        is_current(price_list))).scalar()
    if kind not in KINDS:
        raise PriceListError(f"No current price list has pk {price_list_pk}")
    return kind  # type: ignore[return-value]


def replace_price_list_lines(conn: Connection, price_list_pk: int,
                             lines: Mapping[str, Decimal | int | str | None]) -> None:
    """Make the list's lines exactly `lines` (code → override or None)."""
    kind = _kind_of(conn, price_list_pk)
    t = _tables(kind)
    rows = _line_rows(conn, kind, price_list_pk, lines)
    conn.execute(delete(t.lines).where(t.lines.c.price_list_pk == price_list_pk))
    if rows:
        conn.execute(insert(t.lines), rows)
    conn.execute(update(price_list).where(price_list.c.pk == price_list_pk).values(last_updated=_now_us()))


def assign_price_list(conn: Connection, price_list_pk: int, hf_pks: Iterable[int]) -> int:
    """Make the list the items (or services, after its kind) list of these facilities; returns how many."""
    kind = _kind_of(conn, price_list_pk)
    pks = list(hf_pks)
    if not pks:
        return 0
    column = _tables(kind).hf_column
    result = conn.execute(update(health_facility).where(health_facility.c.pk.in_(pks))
                          .values({column: price_list_pk}))
    return int(result.rowcount)

