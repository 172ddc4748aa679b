"""Builders for claim tests: a facility with its price lists and an entered claim with its lines, in SQL (the way
the Claim kind stores a submission), on top of the registers, products and policies of tests/builders_eligibility.

A typical world: `places(api)`, items/services through the API (`new_item`, `new_service`), a product covering them
(`new_product`), an insuree and an active policy (`new_insuree`, `insert_policy`), then `price_lists(...)` for the
facility and `entered_claim(...)` for the claim to check, process or valuate.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert, select

from hifhir.domain.pricelists import assign_price_list, create_price_list
from hifhir.store.db import transaction
from hifhir.store.tables import (
    CLAIM_ENTERED,
    LINE_PASSED,
    claim,
    claim_item,
    claim_service,
    health_facility,
    insuree,
    medical_item,
    medical_service,
)


@dataclass(frozen=True)
class Line:
    """A claim line as a facility submits it: the item or service code, quantity provided, unit price asked."""

    code: str
    qty: Decimal | int | str = 1
    price: Decimal | int | str = 10
    explanation: str | None = None


def _pk(conn: Any, table: Any, res_id: str) -> int:
    return int(conn.execute(select(table.c.pk).where(table.c.id == res_id)).scalar_one())


def price_lists(engine: Engine, facility_id: str, *, items: dict[str, Any] | None = None,
                services: dict[str, Any] | None = None, name: str | None = None) -> None:
    """Give the facility an items list and a services list: code → price override (None = the scheme price)."""
    suffix = name or uuid.uuid4().hex[:8]
    with transaction(engine, write=True) as conn:
        hf_pk = _pk(conn, health_facility, facility_id)
        for kind, lines in (("item", items), ("service", services)):
            if lines is None:
                continue
            list_pk = create_price_list(conn, kind, f"{kind} list {suffix}", date(2020, 1, 1), lines)
            assign_price_list(conn, list_pk, [hf_pk])


def entered_claim(engine: Engine, facility_id: str, patient_id: str, *, date_from: date | None = None,
                  date_to: date | None = None, date_claimed: date | None = None, icd: str = "A00",
                  secondary: Sequence[str] = (), visit_type: str = "O", code: str | None = None,
                  items: Sequence[Line] = (), services: Sequence[Line] = ()) -> int:
    """An entered claim (status 2) with its lines (status passed, reason 0, in order: items then services, each
    numbered from 1 as Claim.item.sequence), `claimed` = Σ qty × price; returns its pk."""
    date_from = date_from or date.today() - timedelta(days=1)
    claim_id = str(uuid.uuid4())
    all_lines = [*items, *services]
    claimed = sum((Decimal(str(line.qty)) * Decimal(str(line.price)) for line in all_lines), Decimal(0))
    with transaction(engine, write=True) as conn:
        diagnoses = {f"icd_code_{i}": c for i, c in enumerate(secondary, start=1)}
        pk = int(conn.execute(insert(claim).values(
            id=claim_id, uuid=claim_id, code=code or claim_id[:8], hf_pk=_pk(conn, health_facility, facility_id),
            insuree_pk=_pk(conn, insuree, patient_id), date_from=date_from, date_to=date_to,
            date_claimed=date_claimed or max(date_from, date_to or date_from), status=CLAIM_ENTERED,
            icd_code=icd, visit_type=visit_type, claimed=claimed, version_id=1, response_version=1, **diagnoses,
        )).inserted_primary_key[0])
        sequence = 0
        for table, target, column, lines in ((claim_item, medical_item, "item_pk", items),
                                             (claim_service, medical_service, "service_pk", services)):
            for line in lines:
                sequence += 1
                target_pk = conn.execute(select(target.c.pk).where(target.c.code == line.code,
                                                                   target.c.deleted.is_(False))).scalar_one()
                conn.execute(insert(table).values(
                    claim_pk=pk, status=LINE_PASSED, rejection_reason=0, qty_provided=Decimal(str(line.qty)),
                    price_asked=Decimal(str(line.price)), explanation=line.explanation, sequence=sequence,
                    **{column: target_pk}))
    return pk
