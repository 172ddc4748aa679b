"""Claim processing and valuation (domain §3.4.2–3.4.3): product assignment (co-insurance vs fixed limits, visit
types, adults and children, no product), unit prices by price origin, deductibles, ceilings and their
exclusions, category amounts, relative prices, and the claim's resulting status and totals.

Each world goes through the API for the registers (items, services, products, insurees) and through SQL for
policies, price lists and claims (tests/builders_claims). Claims are made checked directly (status 4 and a
category), independently of the submission checks, then `process()` runs on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from hifhir.domain.claims import BYPASSED, SELECTED
from hifhir.domain.claims.valuation import process
from hifhir.domain.pricelists import replace_price_list_lines
from hifhir.store.db import transaction
from hifhir.store.tables import (
    CLAIM_CHECKED,
    CLAIM_PROCESSED,
    CLAIM_REJECTED,
    CLAIM_VALUATED,
    LINE_PASSED,
    LINE_REJECTED,
    POLICY_IDLE,
    claim,
    claim_ded_rem,
    claim_item,
    claim_service,
    health_facility,
    insuree,
    policy,
    product,
)
from tests.builders_claims import Line, entered_claim, price_lists
from tests.builders_eligibility import Places, insert_policy, new_insuree, new_item, new_product, new_service, places

TODAY = date.today()
YESTERDAY = TODAY - timedelta(days=1)
NOW = 1_700_000_000_000_000
D = Decimal


# --- world and helpers -------------------------------------------------------------------------------------------


@dataclass
class World:
    api: Any
    engine: Engine
    places: Places
    items: dict[str, str]  # code → Medication id (register price 10)
    services: dict[str, str]  # code → ActivityDefinition id (register price 40)

    def product(self, code: str, *, items: dict[str, dict[str, Any]] | None = None,
                services: dict[str, dict[str, Any]] | None = None, ceilings: dict[str, Any] | None = None,
                threshold: int = 3, interpretation: str | None = None) -> str:
        """A product covering items/services by code with their coverage-line settings; returns its id."""
        created = new_product(self.api, code, self.places.district,
                              items={self.items[c]: subs for c, subs in (items or {}).items()},
                              services={self.services[c]: subs for c, subs in (services or {}).items()},
                              ceilings=ceilings, threshold=threshold)
        if interpretation is not None:
            with transaction(self.engine, write=True) as conn:
                conn.execute(update(product).where(product.c.id == created["id"])
                             .values(ceiling_interpretation=interpretation))
        return str(created["id"])

    def insuree(self, chf_id: str, birth_date: str = "1980-05-05") -> str:
        return str(new_insuree(self.api, self.places, chf_id, birth_date)["id"])

    def facility_level(self, level: str) -> None:
        with transaction(self.engine, write=True) as conn:
            conn.execute(update(health_facility).where(health_facility.c.id == self.places.facility)
                         .values(level=level))

    def claim(self, patient: str, *, items: list[Line] | None = None, services: list[Line] | None = None,
              category: str = "V", **kw: Any) -> int:
        pk = entered_claim(self.engine, self.places.facility, patient, items=items or [], services=services or [],
                           **kw)
        checked(self.engine, pk, category)
        return pk


@pytest.fixture
def world(api: Any, engine: Engine) -> World:
    p = places(api)
    items = {code: new_item(api, code) for code in ("I1", "I2", "I3", "I4")}
    services = {"S1": new_service(api, "S1", category="S"), "S2": new_service(api, "S2")}
    # The facility's lists: I1 at 25 (override), I2 and I3 at the register price (10), I4 at 30; services at theirs.
    price_lists(engine, p.facility, items={"I1": 25, "I2": None, "I3": None, "I4": 30},
                services={"S1": None, "S2": None})
    return World(api, engine, p, items, services)


def checked(engine: Engine, claim_pk: int, category: str = "V", *, rejected: dict[int, int] | None = None,
            **values: Any) -> None:
    """The claim as the submission checks leave it: status 4 with its category; `rejected` maps a line's sequence
    to the rejection reason the checks gave it; `values` sets further claim columns (review_status…)."""
    with transaction(engine, write=True) as conn:
        conn.execute(update(claim).where(claim.c.pk == claim_pk)
                     .values(status=CLAIM_CHECKED, category=category, **values))
        for sequence, reason in (rejected or {}).items():
            for table in (claim_item, claim_service):
                conn.execute(update(table).where(table.c.claim_pk == claim_pk, table.c.sequence == sequence)
                             .values(status=LINE_REJECTED, rejection_reason=reason, qty_approved=0))


def run(engine: Engine, claim_pk: int) -> int:
    with transaction(engine, write=True) as conn:
        return process(conn, claim_pk, today=TODAY, now=NOW)


def set_line(engine: Engine, claim_pk: int, sequence: int, **values: Any) -> None:
    """What a reviewer changes on a line (price_approved, qty_approved…) before processing."""
    with transaction(engine, write=True) as conn:
        for table in (claim_item, claim_service):
            conn.execute(update(table).where(table.c.claim_pk == claim_pk, table.c.sequence == sequence)
                         .values(**values))


def lines(engine: Engine, claim_pk: int) -> dict[int, Any]:
    """The claim's lines by sequence."""
    with transaction(engine, write=False) as conn:
        rows = [*conn.execute(select(claim_item).where(claim_item.c.claim_pk == claim_pk)),
                *conn.execute(select(claim_service).where(claim_service.c.claim_pk == claim_pk))]
    return {r.sequence: r for r in rows}


def claim_row(engine: Engine, claim_pk: int) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(claim).where(claim.c.pk == claim_pk)).one()


def ded_rems(engine: Engine, claim_pk: int) -> dict[int, Any]:
    """The claim's claim_ded_rem rows by policy pk."""
    with transaction(engine, write=False) as conn:
        rows = conn.execute(select(claim_ded_rem).where(claim_ded_rem.c.claim_pk == claim_pk)).all()
    return {r.policy_pk: r for r in rows}


def pk_of(engine: Engine, table: Any, res_id: str) -> int:
    with transaction(engine, write=False) as conn:
        return int(conn.execute(select(table.c.pk).where(table.c.id == res_id)).scalar_one())


def valuated(engine: Engine, claim_pk: int) -> dict[int, Decimal | None]:
    """price_valuated by line sequence."""
    return {seq: line.price_valuated for seq, line in lines(engine, claim_pk).items()}


# --- step 1: product assignment ----------------------------------------------------------------------------------


def test_co_insurance_line_pays_its_percentage_of_the_price_list_price(world: World) -> None:
    prod = world.product("COINS", items={"I1": {"limitationType": "C", "limitAdult": 80}})
    patient = world.insuree("111000001")
    pol = insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 2, 30)])

    assert run(world.engine, pk) == CLAIM_VALUATED
    line = lines(world.engine, pk)[1]
    assert (line.status, line.rejection_reason) == (LINE_PASSED, 0)
    assert line.product_pk == pk_of(world.engine, product, prod) and line.policy_pk == pol.pk
    assert (line.price_origin, line.limitation, line.limitation_value) == ("P", "C", D(80))
    # 2 × 25 (the facility's price, not the 30 asked) = 50, 80 % covered
    assert (line.price_adjusted, line.price_valuated, line.remunerated_amount) == (D(25), D(40), D(40))
    assert (line.deductable_amount, line.exceed_ceiling_amount) == (D(0), D(0))
    c = claim_row(world.engine, pk)
    assert (c.status, c.date_processed, c.process_stamp) == (CLAIM_VALUATED, TODAY, NOW)
    assert (c.approved, c.valuated, c.remunerated) == (D(50), D(40), D(40))
    row = ded_rems(world.engine, pk)[pol.pk]
    assert (row.ded_g, row.rem_g, row.rem_op, row.rem_ip) == (D(0), D(40), D(40), D(0))


def test_fixed_limit_line_pays_at_most_the_limit_per_unit(world: World) -> None:
    prod = world.product("FIXED", items={"I1": {"limitationType": "F", "limitAdult": 15},
                                         "I2": {"limitationType": "F", "limitAdult": 15}})
    patient = world.insuree("111000002")
    insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 2, 25), Line("I2", 3, 10)])

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    assert (got[1].limitation, got[1].limitation_value) == ("F", D(15))
    assert got[1].price_valuated == D(30)  # 2 × 25 = 50, capped at 2 × 15
    assert got[2].price_valuated == D(30)  # 3 × 10 = 30, under 3 × 15: paid in full
    assert claim_row(world.engine, pk).valuated == D(60)


def test_choice_between_co_insurance_and_fixed_lines_of_two_products(world: World) -> None:
    co = world.product("CO", items={"I1": {"limitationType": "C", "limitAdult": 80},
                                    "I4": {"limitationType": "C", "limitAdult": 50},
                                    "I2": {"limitationType": "C", "limitAdult": 90}})
    fixed = world.product("FX", items={"I1": {"limitationType": "F", "limitAdult": 15},
                                       "I4": {"limitationType": "F", "limitAdult": 20},
                                       "I2": {"limitationType": "F", "limitAdult": 0}})
    patient = world.insuree("111000003")
    co_policy = insert_policy(world.engine, co, [patient])
    fx_policy = insert_policy(world.engine, fixed, [patient])
    pk = world.claim(patient, items=[Line("I1", 1, 25), Line("I4", 1, 30), Line("I2", 1, 10)])

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    # I1 at 25: own share 5 with 80 % co-insurance, 10 with a fixed 15 → co-insurance
    assert (got[1].policy_pk, got[1].limitation, got[1].price_valuated) == (co_policy.pk, "C", D(20))
    # I4 at 30: own share 15 with 50 %, 10 with a fixed 20 → fixed
    assert (got[2].policy_pk, got[2].limitation, got[2].price_valuated) == (fx_policy.pk, "F", D(20))
    # I2: a fixed limit of 0 is no limit at all, better than 90 %
    assert (got[3].policy_pk, got[3].limitation, got[3].price_valuated) == (fx_policy.pk, "F", D(10))
    rows = ded_rems(world.engine, pk)
    assert set(rows) == {co_policy.pk, fx_policy.pk}
    assert (rows[co_policy.pk].rem_g, rows[fx_policy.pk].rem_g) == (D(20), D(30))


def test_visit_type_selects_emergency_and_referral_limits(world: World) -> None:
    prod = world.product("VISIT", items={"I1": {
        "limitationType": "C", "limitAdult": 100,
        "limitationTypeEmergency": "F", "limitAdultEmergency": 12,
        "limitationTypeReferral": "C", "limitAdultReferral": 50}})
    patient = world.insuree("111000004")
    insert_policy(world.engine, prod, [patient])
    other = world.claim(patient, items=[Line("I1", 1, 25)], visit_type="O")
    emergency = world.claim(patient, items=[Line("I1", 1, 25)], visit_type="E")
    referral = world.claim(patient, items=[Line("I1", 1, 25)], visit_type="R")

    for pk in (other, emergency, referral):
        assert run(world.engine, pk) == CLAIM_VALUATED
    assert (lines(world.engine, other)[1].limitation, valuated(world.engine, other)[1]) == ("C", D(25))
    assert (lines(world.engine, emergency)[1].limitation, valuated(world.engine, emergency)[1]) == ("F", D(12))
    got = lines(world.engine, referral)[1]
    assert (got.limitation, got.limitation_value, got.price_valuated) == ("C", D(50), D("12.50"))


def test_child_and_adult_limits_by_age_at_the_target_date(world: World) -> None:
    prod = world.product("AGES", items={"I1": {"limitationType": "C", "limitAdult": 80, "limitChild": 50}})
    adult = world.insuree("111000005", "1980-01-01")
    child = world.insuree("111000006", (TODAY - timedelta(days=365 * 10)).isoformat())
    # eighteen today: still a child on the claim's target date (yesterday)
    almost = world.insuree("111000007", TODAY.replace(year=TODAY.year - 18).isoformat()
                           if not (TODAY.month == 2 and TODAY.day == 29) else f"{TODAY.year - 18}-03-01")
    insert_policy(world.engine, prod, [adult, child, almost])
    pks = [world.claim(p, items=[Line("I1", 2, 25)]) for p in (adult, child, almost)]

    for pk in pks:
        assert run(world.engine, pk) == CLAIM_VALUATED
    assert [lines(world.engine, pk)[1].limitation_value for pk in pks] == [D(80), D(50), D(50)]
    assert [valuated(world.engine, pk)[1] for pk in pks] == [D(40), D(25), D(25)]


def test_line_without_a_covering_product_is_rejected_with_reason_3(world: World) -> None:
    prod = world.product("PART", items={"I1": {}})
    patient = world.insuree("111000008")
    insert_policy(world.engine, prod, [patient])
    # I3 is not in the product; I4 was already rejected by the checks (frequency, 5) and stays as it was
    pk = world.claim(patient, items=[Line("I1", 1, 25), Line("I3", 2, 10), Line("I4", 1, 30)])
    checked(world.engine, pk, rejected={3: 5})

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    assert (got[1].status, got[1].price_valuated) == (LINE_PASSED, D(25))
    assert (got[2].status, got[2].rejection_reason, got[2].qty_approved) == (LINE_REJECTED, 3, D(0))
    assert (got[2].product_pk, got[2].price_valuated) == (None, None)
    assert (got[3].status, got[3].rejection_reason, got[3].product_pk) == (LINE_REJECTED, 5, None)
    c = claim_row(world.engine, pk)
    assert (c.approved, c.valuated, c.remunerated) == (D(25), D(25), D(25))


def test_claim_without_any_covered_line_is_rejected(world: World) -> None:
    prod = world.product("IDLE", items={"I1": {}})
    patient = world.insuree("111000009")
    insert_policy(world.engine, prod, [patient], status=POLICY_IDLE)  # an idle policy covers nothing
    pk = world.claim(patient, items=[Line("I1", 1, 25), Line("I2", 1, 10)])

    assert run(world.engine, pk) == CLAIM_REJECTED
    got = lines(world.engine, pk)
    assert [(line.status, line.rejection_reason) for line in got.values()] == [(LINE_REJECTED, 3)] * 2
    c = claim_row(world.engine, pk)
    assert (c.status, c.rejection_reason, c.approved, c.valuated, c.date_processed) == (
        CLAIM_REJECTED, 1, D(0), None, None)
    assert ded_rems(world.engine, pk) == {}


def test_policy_windows_decide_what_covers_the_target_date(world: World) -> None:
    prod = world.product("WINDOW", items={"I1": {}})
    patient, late = world.insuree("111000010"), world.insuree("111000011")
    # a policy that has expired since still covers a claim inside its window
    insert_policy(world.engine, prod, [patient, late], effective=TODAY - timedelta(days=400),
                  expiry=TODAY - timedelta(days=36), member_effective={late: TODAY - timedelta(days=40)})
    in_window = world.claim(patient, items=[Line("I1", 1, 25)], date_from=TODAY - timedelta(days=50))
    after = world.claim(patient, items=[Line("I1", 1, 25)], date_from=TODAY - timedelta(days=20))
    # a member covered only from 40 days ago: not on the target date 50 days ago
    before_member = world.claim(late, items=[Line("I1", 1, 25)], date_from=TODAY - timedelta(days=50))

    assert run(world.engine, in_window) == CLAIM_VALUATED
    assert run(world.engine, after) == CLAIM_REJECTED
    assert run(world.engine, before_member) == CLAIM_REJECTED
    assert lines(world.engine, before_member)[1].rejection_reason == 3


def test_line_dropped_from_the_price_list_since_the_checks_is_rejected_with_reason_2(world: World) -> None:
    prod = world.product("LISTED", items={"I1": {}, "I2": {}})
    patient = world.insuree("111000012")
    insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 1, 25), Line("I2", 1, 10)])
    with transaction(world.engine, write=True) as conn:
        list_pk = conn.execute(select(health_facility.c.item_price_list_pk)
                               .where(health_facility.c.id == world.places.facility)).scalar_one()
        replace_price_list_lines(conn, list_pk, {"I1": 25, "I3": None, "I4": 30})

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    assert (got[1].status, got[1].price_valuated) == (LINE_PASSED, D(25))
    assert (got[2].status, got[2].rejection_reason) == (LINE_REJECTED, 2)


# --- unit prices -------------------------------------------------------------------------------------------------


def test_unit_price_by_price_origin(world: World) -> None:
    prod = world.product("PRICES", items={"I1": {}, "I2": {}, "I3": {"priceOrigin": "O"}, "I4": {"priceOrigin": "O"}})
    patient = world.insuree("111000013")
    insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 1, 40), Line("I2", 2, 40), Line("I3", 1, 18), Line("I4", 1, 50)])
    set_line(world.engine, pk, 4, price_approved=D(45))  # a reviewer's price for an own-price line

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    assert got[1].price_adjusted == D(25)  # price-list override
    assert got[2].price_adjusted == D(10)  # no override: the item's own price
    assert got[3].price_adjusted == D(18)  # own price: what the facility asked
    assert got[4].price_adjusted == D(45)  # own price approved by the reviewer (legacy; Python took the asked one)
    assert [got[s].price_origin for s in range(1, 5)] == ["P", "P", "O", "O"]
    assert [got[s].remunerated_amount for s in range(1, 5)] == [D(25), D(20), D(18), D(45)]
    c = claim_row(world.engine, pk)
    assert (c.status, c.approved, c.valuated, c.remunerated) == (CLAIM_VALUATED, D(108), D(108), D(108))


def test_relative_price_line_leaves_the_claim_processed_for_the_batch_run(world: World) -> None:
    prod = world.product("REL", items={"I1": {"priceOrigin": "R", "limitAdult": 80}, "I2": {}})
    patient = world.insuree("111000014")
    insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 2, 25), Line("I2", 1, 10)])

    assert run(world.engine, pk) == CLAIM_PROCESSED
    got = lines(world.engine, pk)
    # the relative line keeps its nominal valuation (the batch run's index divides by it), unremunerated
    assert (got[1].price_origin, got[1].price_valuated, got[1].remunerated_amount) == ("R", D(40), None)
    assert (got[2].price_origin, got[2].price_valuated, got[2].remunerated_amount) == ("P", D(10), D(10))
    c = claim_row(world.engine, pk)
    assert (c.status, c.approved, c.valuated, c.remunerated) == (CLAIM_PROCESSED, D(60), None, None)
    assert (c.date_processed, c.process_stamp) == (TODAY, NOW)


# --- deductibles -------------------------------------------------------------------------------------------------


def test_deductible_per_treatment_applies_to_each_claim(world: World) -> None:
    prod = world.product("DEDT", items={"I1": {}, "I2": {"limitationType": "C", "limitAdult": 50}},
                         ceilings={"dedTreatment": 30})
    patient = world.insuree("111000015")
    pol = insert_policy(world.engine, prod, [patient])
    first = world.claim(patient, items=[Line("I1", 1, 25), Line("I2", 2, 10)])
    second = world.claim(patient, items=[Line("I1", 2, 25)])

    assert run(world.engine, first) == CLAIM_VALUATED
    got = lines(world.engine, first)
    assert (got[1].deductable_amount, got[1].price_valuated) == (D(25), D(0))  # absorbed entirely
    # 20: 5 left to deduct, then 50 % of the remaining 15
    assert (got[2].deductable_amount, got[2].price_valuated) == (D(5), D("7.50"))
    row = ded_rems(world.engine, first)[pol.pk]
    assert (row.ded_g, row.ded_op, row.ded_ip, row.rem_g) == (D(30), D(30), D(0), D("7.50"))
    assert run(world.engine, second) == CLAIM_VALUATED  # a new treatment, a new deductible
    assert (lines(world.engine, second)[1].deductable_amount, valuated(world.engine, second)[1]) == (D(30), D(20))


def test_deductible_per_insuree_is_consumed_across_claims(world: World) -> None:
    prod = world.product("DEDI", items={"I1": {}}, ceilings={"dedInsuree": 40})
    patient, sibling = world.insuree("111000016"), world.insuree("111000017")
    pol = insert_policy(world.engine, prod, [patient, sibling])
    first = world.claim(patient, items=[Line("I1", 1, 25)])
    second = world.claim(patient, items=[Line("I1", 1, 25)])
    theirs = world.claim(sibling, items=[Line("I1", 1, 25)])

    for pk in (first, second, theirs):
        assert run(world.engine, pk) == CLAIM_VALUATED
    assert (lines(world.engine, first)[1].deductable_amount, valuated(world.engine, first)[1]) == (D(25), D(0))
    assert (lines(world.engine, second)[1].deductable_amount, valuated(world.engine, second)[1]) == (D(15), D(10))
    # the sibling has a deductible of their own
    assert (lines(world.engine, theirs)[1].deductable_amount, valuated(world.engine, theirs)[1]) == (D(25), D(0))
    assert ded_rems(world.engine, second)[pol.pk].ded_g == D(15)


def test_deductible_per_policy_is_shared_by_the_members(world: World) -> None:
    prod = world.product("DEDP", items={"I1": {}}, ceilings={"dedPolicy": 40})
    patient, sibling = world.insuree("111000018"), world.insuree("111000019")
    pol = insert_policy(world.engine, prod, [patient, sibling])
    first = world.claim(patient, items=[Line("I1", 1, 25)])
    theirs = world.claim(sibling, items=[Line("I1", 2, 25)])

    assert run(world.engine, first) == CLAIM_VALUATED
    assert run(world.engine, theirs) == CLAIM_VALUATED
    assert (lines(world.engine, theirs)[1].deductable_amount, valuated(world.engine, theirs)[1]) == (D(15), D(35))
    row = ded_rems(world.engine, theirs)[pol.pk]
    assert (row.insuree_pk, row.ded_g, row.rem_g) == (pk_of(world.engine, insuree, sibling), D(15), D(35))


def test_in_patient_deductible_applies_to_hospital_care_only(world: World) -> None:
    prod = world.product("DEDIP", items={"I1": {}}, ceilings={"dedIpTreatment": 20, "dedOpTreatment": 5})
    patient = world.insuree("111000020")
    pol = insert_policy(world.engine, prod, [patient])
    stay = world.claim(patient, items=[Line("I1", 2, 25)], date_from=TODAY - timedelta(days=4), date_to=YESTERDAY,
                       category="H")
    visit = world.claim(patient, items=[Line("I1", 2, 25)])

    assert run(world.engine, stay) == CLAIM_VALUATED
    assert run(world.engine, visit) == CLAIM_VALUATED
    assert valuated(world.engine, stay)[1] == D(30)
    assert valuated(world.engine, visit)[1] == D(45)
    stay_row, visit_row = ded_rems(world.engine, stay)[pol.pk], ded_rems(world.engine, visit)[pol.pk]
    assert (stay_row.ded_ip, stay_row.ded_op, stay_row.rem_ip) == (D(20), D(0), D(30))
    assert (visit_row.ded_ip, visit_row.ded_op, visit_row.rem_op) == (D(0), D(5), D(45))


# --- ceilings ----------------------------------------------------------------------------------------------------


def test_general_ceiling_per_treatment_caps_the_claim(world: World) -> None:
    prod = world.product("MAXT", items={"I1": {}, "I4": {}, "I2": {}}, ceilings={"maxTreatment": 50})
    patient = world.insuree("111000021")
    pol = insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 1, 25), Line("I4", 1, 30), Line("I2", 1, 10)])

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    assert [(got[s].price_valuated, got[s].exceed_ceiling_amount) for s in (1, 2, 3)] == [
        (D(25), D(0)), (D(25), D(5)), (D(0), D(10))]
    assert ded_rems(world.engine, pk)[pol.pk].rem_g == D(50)
    c = claim_row(world.engine, pk)
    assert (c.approved, c.valuated, c.remunerated) == (D(65), D(50), D(50))


def test_insuree_ceiling_counts_earlier_claims(world: World) -> None:
    prod = world.product("MAXI", items={"I4": {}}, ceilings={"maxInsuree": 50})
    patient = world.insuree("111000022")
    insert_policy(world.engine, prod, [patient])
    first = world.claim(patient, items=[Line("I4", 1, 30)])
    second = world.claim(patient, items=[Line("I4", 1, 30)])
    third = world.claim(patient, items=[Line("I4", 1, 30)])

    for pk in (first, second, third):
        assert run(world.engine, pk) == CLAIM_VALUATED
    assert [valuated(world.engine, pk)[1] for pk in (first, second, third)] == [D(30), D(20), D(0)]
    assert lines(world.engine, third)[1].exceed_ceiling_amount == D(30)


def test_ip_and_op_ceilings_by_claim_type(world: World) -> None:
    prod = world.product("CLTYPE", items={"I4": {}}, ceilings={"maxIpTreatment": 100, "maxOpTreatment": 30},
                         interpretation="I")
    patient = world.insuree("111000023")
    pol = insert_policy(world.engine, prod, [patient])
    stay = world.claim(patient, items=[Line("I4", 4, 30)], date_from=TODAY - timedelta(days=3), date_to=YESTERDAY,
                       category="H")
    visit = world.claim(patient, items=[Line("I4", 4, 30)])

    assert run(world.engine, stay) == CLAIM_VALUATED
    assert run(world.engine, visit) == CLAIM_VALUATED
    assert (valuated(world.engine, stay)[1], lines(world.engine, stay)[1].exceed_ceiling_amount) == (D(100), D(20))
    assert (valuated(world.engine, visit)[1], lines(world.engine, visit)[1].exceed_ceiling_amount) == (D(30), D(90))
    stay_row, visit_row = ded_rems(world.engine, stay)[pol.pk], ded_rems(world.engine, visit)[pol.pk]
    assert (stay_row.rem_g, stay_row.rem_ip, stay_row.rem_op) == (D(100), D(100), D(0))
    assert (visit_row.rem_g, visit_row.rem_ip, visit_row.rem_op) == (D(30), D(0), D(30))


def test_ip_and_op_ceilings_by_facility_level(world: World) -> None:
    prod = world.product("HFTYPE", items={"I4": {}}, ceilings={"maxIpTreatment": 100, "maxOpTreatment": 30},
                         interpretation="H")
    patient = world.insuree("111000024")
    insert_policy(world.engine, prod, [patient])
    world.facility_level("D")  # a dispensary: even a stay there is out-patient care
    stay = world.claim(patient, items=[Line("I4", 4, 30)], date_from=TODAY - timedelta(days=3), date_to=YESTERDAY,
                       category="H")
    assert run(world.engine, stay) == CLAIM_VALUATED
    world.facility_level("H")  # a hospital: even a single-day visit is hospital care
    visit = world.claim(patient, items=[Line("I4", 4, 30)])
    assert run(world.engine, visit) == CLAIM_VALUATED

    assert valuated(world.engine, stay)[1] == D(30)
    assert valuated(world.engine, visit)[1] == D(100)


def test_policy_ceiling_raised_by_extra_members_and_capped(world: World) -> None:
    prod = world.product("MAXP", items={"I4": {}}, threshold=2,
                         ceilings={"maxPolicy": 100, "maxPolicyExtraMember": 50, "maxCeilingPolicy": 180})
    three = [world.insuree(f"11100003{i}") for i in range(3)]
    four = [world.insuree(f"11100004{i}") for i in range(4)]
    insert_policy(world.engine, prod, three)  # 100 + 1 × 50 = 150
    insert_policy(world.engine, prod, four)  # 100 + 2 × 50 = 200, capped at 180
    first = world.claim(three[0], items=[Line("I4", 4, 30)])
    second = world.claim(three[1], items=[Line("I4", 2, 30)])
    big = world.claim(four[3], items=[Line("I4", 7, 30)])

    for pk in (first, second, big):
        assert run(world.engine, pk) == CLAIM_VALUATED
    assert valuated(world.engine, first)[1] == D(120)
    # the policy ceiling is the family's: 30 left after the first member's claim
    assert (valuated(world.engine, second)[1], lines(world.engine, second)[1].exceed_ceiling_amount) == (D(30), D(30))
    assert (valuated(world.engine, big)[1], lines(world.engine, big)[1].exceed_ceiling_amount) == (D(180), D(30))


def test_category_amount_ceiling_caps_a_surgery_claim(world: World) -> None:
    prod = world.product("SURG", items={"I1": {}}, services={"S1": {}}, ceilings={"maxAmountSurgery": 60})
    patient = world.insuree("111000025")
    pol = insert_policy(world.engine, prod, [patient])
    surgery = world.claim(patient, items=[Line("I1", 2, 25)], services=[Line("S1", 1, 40)], category="S")
    visit = world.claim(patient, items=[Line("I1", 4, 25)], category="V")

    assert run(world.engine, surgery) == CLAIM_VALUATED
    assert run(world.engine, visit) == CLAIM_VALUATED
    # items first: the item's 50 fits, the service's 40 only up to the 60
    assert valuated(world.engine, surgery) == {1: D(50), 2: D(10)}
    assert lines(world.engine, surgery)[2].exceed_ceiling_amount_category == D(30)  # the 30 the ceiling cut
    row = ded_rems(world.engine, surgery)[pol.pk]
    assert (row.rem_surgery, row.rem_g, row.rem_consult) == (D(60), D(60), D(0))
    # visits have no category amount
    assert valuated(world.engine, visit) == {1: D(100)}


def test_ceiling_exclusions_by_care_kind(world: World) -> None:
    prod = world.product("EXCL", items={"I1": {"ceilingExclusionAdult": "N"}, "I4": {"ceilingExclusionAdult": "H"},
                                        "I2": {}},
                         ceilings={"maxTreatment": 30})
    patient = world.insuree("111000026")
    pol = insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 2, 25), Line("I4", 1, 30), Line("I2", 1, 10)])

    assert run(world.engine, pk) == CLAIM_VALUATED
    got = lines(world.engine, pk)
    # I1 excluded from ceilings for non-hospital care: paid in full and not counted against the 30
    assert (got[1].price_valuated, got[1].exceed_ceiling_amount) == (D(50), D(0))
    # I4 excluded only for hospital care: this visit's ceiling applies
    assert (got[2].price_valuated, got[2].exceed_ceiling_amount) == (D(30), D(0))
    assert (got[3].price_valuated, got[3].exceed_ceiling_amount) == (D(0), D(10))
    assert ded_rems(world.engine, pk)[pol.pk].rem_g == D(30)
    assert claim_row(world.engine, pk).valuated == D(80)


# --- the claim ---------------------------------------------------------------------------------------------------


def test_processing_bypasses_pending_review_and_feedback(world: World) -> None:
    prod = world.product("BYPASS", items={"I1": {}})
    patient = world.insuree("111000027")
    insert_policy(world.engine, prod, [patient])
    selected = world.claim(patient, items=[Line("I1", 1, 25)])
    checked(world.engine, selected, review_status=SELECTED, feedback_status=SELECTED)
    idle = world.claim(patient, items=[Line("I1", 1, 25)])

    assert run(world.engine, selected) == CLAIM_VALUATED
    assert run(world.engine, idle) == CLAIM_VALUATED
    c = claim_row(world.engine, selected)
    assert (c.review_status, c.feedback_status) == (BYPASSED, BYPASSED)
    c = claim_row(world.engine, idle)
    assert (c.review_status, c.feedback_status) == (1, 1)


def test_reviewed_quantity_is_valuated(world: World) -> None:
    prod = world.product("REVIEW", items={"I1": {"limitationType": "C", "limitAdult": 80}})
    patient = world.insuree("111000028")
    insert_policy(world.engine, prod, [patient])
    pk = world.claim(patient, items=[Line("I1", 4, 25)])
    set_line(world.engine, pk, 1, qty_approved=D(3))

    assert run(world.engine, pk) == CLAIM_VALUATED
    assert valuated(world.engine, pk) == {1: D(60)}
    assert claim_row(world.engine, pk).approved == D(75)


def test_only_a_checked_claim_can_be_processed(world: World) -> None:
    prod = world.product("ONCE", items={"I1": {}})
    patient = world.insuree("111000029")
    insert_policy(world.engine, prod, [patient])
    entered = entered_claim(world.engine, world.places.facility, patient, items=[Line("I1", 1, 25)])
    with pytest.raises(ValueError, match="checked"):
        run(world.engine, entered)
    assert claim_row(world.engine, entered).status == 2

    pk = world.claim(patient, items=[Line("I1", 1, 25)])
    assert run(world.engine, pk) == CLAIM_VALUATED
    with pytest.raises(ValueError, match="status 16"):
        run(world.engine, pk)  # processed once only: a second run would consume the deductibles twice
    assert len(ded_rems(world.engine, pk)) == 1
    with pytest.raises(ValueError, match="does not exist"):
        run(world.engine, 999_999)


def test_policy_stored_as_expired_still_covers_its_window(world: World) -> None:
    prod = world.product("EXP", items={"I1": {}})
    patient = world.insuree("111000030")
    # hifhir never stores 8 (expiry is by date), but migrated openIMIS policies carry it: legacy accepts 2 or 8
    pol = insert_policy(world.engine, prod, [patient], status=8)
    pk = world.claim(patient, items=[Line("I1", 1, 25)])

    assert run(world.engine, pk) == CLAIM_VALUATED
    assert lines(world.engine, pk)[1].policy_pk == pol.pk
    with transaction(world.engine, write=False) as conn:
        assert conn.execute(select(policy.c.status).where(policy.c.pk == pol.pk)).scalar_one() == 8
