"""The monthly batch run with relative pricing (domain §2.22, §3.4.4): relative indexes per product, period and
care type from the allocated contributions and the relative distribution, remunerated amounts of processed
claims, once per location and month; the `hifhir claims` command.

Processed claims are built as processing leaves them (status 8, process_stamp, lines with product, policy, price
origin and valuated amount); contributions are premium rows on policies inserted in SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from hifhir import cli
from hifhir.domain.claims import batch
from hifhir.store.db import transaction
from hifhir.store.tables import (
    POLICY_IDLE,
    batch_run,
    claim,
    claim_item,
    claim_service,
    health_facility,
    insuree,
    location,
    policy,
    premium,
    product,
    rel_distr,
    rel_index,
)
from tests.builders import health_facility as hf_resource
from tests.builders_claims import Line, entered_claim
from tests.builders_eligibility import Places, insert_policy, new_insuree, new_item, new_product, new_service, places

TODAY = date(2026, 11, 25)  # after October 2026, the month most scenarios valuate
YEAR_START, YEAR_END = date(2026, 1, 1), date(2026, 12, 31)
DAILY = Decimal(10)  # the standard premium: 3,650 for a 365-day policy, 10 a day
CENT = Decimal("0.01")


# --- the world --------------------------------------------------------------------------------------------------


@dataclass
class World:
    places: Places
    patient: str
    products: dict[str, str]  # code → InsurancePlan id
    policies: dict[str, int]  # product code → policy pk
    facilities: dict[str, str]  # level → Organization id


def world(api: Any, engine: Engine, products: Sequence[tuple[str, str | None]] = (("PR1", None),),
          premium_amount: Decimal = DAILY * 365) -> World:
    """A patient with one policy per product (effective all of 2026, one premium paid on January 1), an item I1 and
    a service S1, and three facilities of levels H (hospital), C (health centre) and D (dispensary)."""
    where = places(api)
    new_item(api, "I1")
    new_service(api, "S1")
    patient = new_insuree(api, where, "100000001")["id"]
    facilities = {"H": where.facility}
    for level in ("C", "D"):
        resp = api.post("Organization", hf_resource(f"RA{level}HF001", where.district))
        assert resp.status_code == 201, resp.text
        facilities[level] = resp.json()["id"]
    with transaction(engine, write=True) as conn:
        for level, hf_id in facilities.items():
            conn.execute(update(health_facility).where(health_facility.c.id == hf_id).values(level=level))
    ids, policies = {}, {}
    for code, area in products:
        area_id = {"region": where.region, "district": where.district, None: None}[area]
        ids[code] = new_product(api, code, area_id)["id"]
        policies[code] = insert_policy(engine, ids[code], [patient], effective=YEAR_START, expiry=YEAR_END).pk
        pay(engine, policies[code], premium_amount, YEAR_START)
    return World(where, patient, ids, policies, facilities)


def pay(engine: Engine, policy_pk: int, amount: Decimal, on: date, *, photo_fee: bool = False) -> None:
    with transaction(engine, write=True) as conn:
        product_pk = conn.execute(select(policy.c.product_pk).where(policy.c.pk == policy_pk)).scalar_one()
        conn.execute(insert(premium).values(
            policy_pk=policy_pk, product_pk=product_pk, amount=amount, receipt=uuid.uuid4().hex[:12], pay_date=on,
            pay_type="C", is_photo_fee=photo_fee))


def product_pk(engine: Engine, w: World, code: str) -> int:
    with transaction(engine, write=False) as conn:
        return int(conn.execute(select(product.c.pk).where(product.c.id == w.products[code])).scalar_one())


def configure(engine: Engine, w: World, code: str, **columns: Any) -> None:
    """Product columns the InsurancePlan capitation/ceilings extensions carry (ceiling interpretation, levels)."""
    with transaction(engine, write=True) as conn:
        conn.execute(update(product).where(product.c.id == w.products[code]).values(**columns))


def distribute(engine: Engine, w: World, code: str, dist_type: str, care: str, percents: Sequence[Any]) -> None:
    with transaction(engine, write=True) as conn:
        batch.set_distribution(conn, product_pk(engine, w, code), dist_type, care,
                               [Decimal(str(p)) for p in percents])


@dataclass(frozen=True)
class L:
    """A processed line: service S1 (or item I1), price origin, valuated amount (None = not valuated), product."""

    origin: str = "R"
    valuated: Decimal | int | str | None = 100
    kind: str = "service"
    qty: Decimal | int | str = 1
    price: Decimal | int | str = 10
    product: str = "PR1"
    status: int = 1


def stamp(day: date, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC).timestamp()) * 1_000_000


def processed(engine: Engine, w: World, processed_on: int, lines: Sequence[L], *, level: str = "C",
              date_from: date = date(2026, 10, 2), date_to: date | None = None) -> int:
    """A claim as processing leaves it with relative lines: status 8, lines assigned to a product and policy with
    their price origin and valuated amount, P/O lines already remunerated, R lines not yet."""
    items = [ln for ln in lines if ln.kind == "item"]
    services = [ln for ln in lines if ln.kind == "service"]
    pk = entered_claim(engine, w.facilities[level], w.patient, date_from=date_from, date_to=date_to,
                       items=[Line("I1", ln.qty, ln.price) for ln in items],
                       services=[Line("S1", ln.qty, ln.price) for ln in services])
    with transaction(engine, write=True) as conn:
        conn.execute(update(claim).where(claim.c.pk == pk).values(status=8, process_stamp=processed_on))
        for sequence, ln in enumerate([*items, *services], start=1):
            table = claim_item if ln.kind == "item" else claim_service
            valuated = None if ln.valuated is None else Decimal(str(ln.valuated))
            prod_pk = conn.execute(select(product.c.pk).where(product.c.id == w.products[ln.product])).scalar_one()
            conn.execute(update(table).where(table.c.claim_pk == pk, table.c.sequence == sequence).values(
                product_pk=prod_pk, policy_pk=w.policies[ln.product], price_origin=ln.origin, status=ln.status,
                price_adjusted=Decimal(str(ln.price)), price_valuated=valuated,
                remunerated_amount=None if ln.origin == "R" else valuated))
    return pk


def run(engine: Engine, year: int = 2026, month: int = 10, location_pk: int | None = None,
        today: date = TODAY) -> batch.BatchResult:
    with transaction(engine, write=True) as conn:
        return batch.run(conn, year=year, month=month, location_pk=location_pk, today=today, now=1_000)


def claim_row(engine: Engine, pk: int) -> Any:
    with transaction(engine, write=False) as conn:
        return conn.execute(select(claim.c.status, claim.c.run_pk, claim.c.remunerated)
                            .where(claim.c.pk == pk)).one()


def remunerated(engine: Engine, pk: int) -> list[Decimal | None]:
    """The claim's line remunerated amounts, items then services, in submission order."""
    with transaction(engine, write=False) as conn:
        out = []
        for t in (claim_item, claim_service):
            out += conn.execute(select(t.c.remunerated_amount).where(t.c.claim_pk == pk)
                                .order_by(t.c.sequence)).scalars().all()
        return out


def indexes(engine: Engine) -> list[tuple[int, str, int, int, int]]:
    """rel_index rows as (rel_type, care_type, rel_year, rel_period, index_e4), in insertion order."""
    with transaction(engine, write=False) as conn:
        return [tuple(r) for r in conn.execute(select(  # type: ignore[misc]
            rel_index.c.rel_type, rel_index.c.care_type, rel_index.c.rel_year, rel_index.c.rel_period,
            rel_index.c.index_e4).order_by(rel_index.c.pk))]


def expected_e4(allocated: Decimal, percent: Decimal, valuated: Decimal) -> int:
    return int((allocated * percent / 100 / valuated * 10_000).quantize(Decimal(1)))


def times(index_e4: int, amount: Decimal | int) -> Decimal:
    return (Decimal(index_e4) / 10_000 * Decimal(amount)).quantize(CENT, rounding=ROUND_HALF_UP)


# --- monthly relative index ---------------------------------------------------------------------------------------


def test_monthly_index_valuates_relative_lines(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "M", "B", [50] * 9 + [80, 50, 50])
    first = processed(engine, w, stamp(date(2026, 10, 3)), [L("R", 100), L("R", 40, kind="item")])
    last_moment = processed(engine, w, stamp(date(2026, 10, 31), 23, 59, 59), [L("R", 300)])
    september = processed(engine, w, stamp(date(2026, 9, 30), 23, 59, 59), [L("R", 1000)])
    november = processed(engine, w, stamp(date(2026, 11, 1), 0, 0, 0), [L("R", 1000)])

    result = run(engine)

    # October's allocation of a 3,650 premium over 365 days: 31 days × 10; 80 % of it for 440 of relative value
    e4 = expected_e4(DAILY * 31, Decimal(80), Decimal(440))
    assert e4 == 5636
    assert indexes(engine) == [(12, "B", 2026, 10, e4)]
    assert remunerated(engine, first) == [times(e4, 40), times(e4, 100)] == [Decimal("22.54"), Decimal("56.36")]
    assert remunerated(engine, last_moment) == [Decimal("169.08")]
    for pk, total in ((first, Decimal("78.90")), (last_moment, Decimal("169.08"))):
        assert claim_row(engine, pk) == (16, result.run_pk, total)
    for pk in (september, november):
        assert claim_row(engine, pk) == (8, None, None)
        assert remunerated(engine, pk) == [None]
    assert result == batch.BatchResult(result.run_pk, 1, 1, 2, Decimal("247.98"))
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(batch_run.c.location_pk, batch_run.c.run_year, batch_run.c.run_month,
                                   batch_run.c.run_date)).one() == (None, 2026, 10, TODAY)


def test_other_price_origins_are_paid_at_their_valuation(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "M", "B", [25] * 12)
    pk = processed(engine, w, stamp(date(2026, 10, 10)), [
        L("R", 100), L("P", 70), L("O", "12.34", kind="item"),
        L("P", None, kind="item", qty="2.5", price="3.33"),  # not valuated: price × quantity, 8.325 → 8.33
        L("R", 500, status=2),  # rejected: untouched
    ])

    result = run(engine)

    e4 = expected_e4(DAILY * 31, Decimal(25), Decimal(100))
    assert e4 == 7750
    assert remunerated(engine, pk) == [Decimal("12.34"), Decimal("8.33"), Decimal("77.50"), Decimal(70), None]
    assert claim_row(engine, pk) == (16, result.run_pk, Decimal("168.17"))


def test_relative_lines_without_valuation_take_price_times_quantity(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "M", "B", [100] * 12)
    pk = processed(engine, w, stamp(date(2026, 10, 10)), [L("R", 155), L("R", None, qty=3, price=15)])

    run(engine)

    e4 = expected_e4(DAILY * 31, Decimal(100), Decimal(155))  # the line without a valuated amount is not counted
    assert e4 == 20000
    assert remunerated(engine, pk) == [Decimal(310), Decimal(90)]


def test_zero_relative_value_gives_index_one(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "M", "B", [100] * 12)
    pk = processed(engine, w, stamp(date(2026, 10, 10)), [L("P", 60), L("R", 0)])

    run(engine)

    assert indexes(engine) == [(12, "B", 2026, 10, 10_000)]
    assert remunerated(engine, pk) == [Decimal(60), Decimal(0)]
    assert claim_row(engine, pk).status == 16


def test_product_without_distribution_is_valuated_monthly_at_index_one(api, engine):
    w = world(api, engine)
    pk = processed(engine, w, stamp(date(2026, 10, 10)), [L("R", 123)])

    result = run(engine)

    assert indexes(engine) == []  # a fallback index, not computed
    assert remunerated(engine, pk) == [Decimal(123)]
    assert claim_row(engine, pk) == (16, result.run_pk, Decimal(123))


def test_missing_distribution_share_counts_as_full(api, engine):
    w = world(api, engine)
    configure(engine, w, "PR1", period_rel_prices="M")  # set on the InsurancePlan, no shares stored
    processed(engine, w, stamp(date(2026, 10, 10)), [L("R", 620)])

    run(engine)

    assert indexes(engine) == [(12, "B", 2026, 10, 5000)]  # 310 × 100 % / 620


# --- allocated contributions -----------------------------------------------------------------------------------


def test_allocated_contributions_are_pro_rata_of_the_covered_days(api, engine):
    w = world(api, engine, premium_amount=Decimal(0))
    distribute(engine, w, "PR1", "M", "B", [100] * 12)
    prod = w.products["PR1"]
    later = insert_policy(engine, prod, [w.patient], effective=date(2026, 10, 11), expiry=date(2027, 10, 10)).pk
    pay(engine, later, Decimal(730), date(2026, 10, 11))  # 2 a day over 365 days: 21 days in October
    late_payment = insert_policy(engine, prod, [w.patient], effective=date(2026, 1, 1), expiry=date(2026, 12, 31)).pk
    pay(engine, late_payment, Decimal(610), date(2026, 11, 1))  # paid after October: nothing for October
    paid_in_october = insert_policy(engine, prod, [w.patient], effective=date(2026, 1, 1),
                                    expiry=date(2026, 12, 31)).pk
    pay(engine, paid_in_october, Decimal(920), date(2026, 10, 1))  # 92 days from Oct 1: 10 a day, 31 days
    ending = insert_policy(engine, prod, [w.patient], effective=date(2025, 10, 21), expiry=date(2026, 10, 20)).pk
    pay(engine, ending, Decimal(365), date(2025, 10, 21))  # 1 a day, 20 days in October
    pay(engine, ending, Decimal(100), date(2025, 10, 21), photo_fee=True)  # never a contribution
    idle = insert_policy(engine, prod, [w.patient], status=POLICY_IDLE, effective=date(2026, 1, 1),
                         expiry=date(2026, 12, 31)).pk
    pay(engine, idle, Decimal(3650), date(2026, 1, 1))
    expired = insert_policy(engine, prod, [w.patient], effective=date(2025, 1, 1), expiry=date(2025, 12, 31)).pk
    pay(engine, expired, Decimal(3650), date(2025, 1, 1))
    processed(engine, w, stamp(date(2026, 10, 10)), [L("R", 100)])

    run(engine)

    allocated = Decimal(42) + Decimal(310) + Decimal(20)
    assert indexes(engine) == [(12, "B", 2026, 10, expected_e4(allocated, Decimal(100), Decimal(100)))]
    assert indexes(engine)[0][4] == 37_200


# --- quarters and years ---------------------------------------------------------------------------------------


def test_quarterly_index_only_at_quarter_end(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "Q", "B", [100, 100, 100, 50])
    october = processed(engine, w, stamp(date(2026, 10, 15)), [L("R", 200)])
    november = processed(engine, w, stamp(date(2026, 11, 15)), [L("R", 300)])
    december = processed(engine, w, stamp(date(2026, 12, 15)), [L("R", 415)])

    after_october = run(engine, month=10)
    after_november = run(engine, month=11, today=date(2026, 12, 2))

    assert (after_october.indexes, after_october.claims, after_november.indexes, after_november.claims) == (0, 0, 0, 0)
    assert indexes(engine) == []
    for pk in (october, november, december):
        assert claim_row(engine, pk) == (8, None, None)

    result = run(engine, month=12, today=date(2027, 1, 5))

    e4 = expected_e4(DAILY * 92, Decimal(50), Decimal(915))  # October 1 to December 31, the 4th quarter's share
    assert e4 == 5027
    assert indexes(engine) == [(4, "B", 2026, 4, e4)]
    assert [remunerated(engine, pk) for pk in (october, november, december)] == [
        [times(e4, 200)], [times(e4, 300)], [times(e4, 415)]]
    assert result.claims == 3
    assert {claim_row(engine, pk).run_pk for pk in (october, november, december)} == {result.run_pk}


def test_yearly_index_runs_from_january_to_the_month(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "Y", "B", [90])
    january = processed(engine, w, stamp(date(2026, 1, 20)), [L("R", 100)], date_from=date(2026, 1, 19))
    february = processed(engine, w, stamp(date(2026, 2, 20)), [L("R", 200)], date_from=date(2026, 2, 19))

    run(engine, month=1, today=date(2026, 2, 1))
    run(engine, month=2, today=date(2026, 3, 1))

    jan_e4 = expected_e4(DAILY * 31, Decimal(90), Decimal(100))
    # February: January 1 to February 28, against the year's relative value so far (January's claim included)
    feb_e4 = expected_e4(DAILY * 59, Decimal(90), Decimal(300))
    assert (jan_e4, feb_e4) == (27_900, 17_700)
    assert indexes(engine) == [(1, "B", 2026, 1, jan_e4), (1, "B", 2026, 1, feb_e4)]
    assert remunerated(engine, january) == [Decimal(279)]
    assert remunerated(engine, february) == [Decimal(354)]


# --- care types ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpretation", ["I", None])  # none: by claim type, as processing reads it
def test_care_types_by_claim_length(api, engine, interpretation):
    w = world(api, engine)
    configure(engine, w, "PR1", ceiling_interpretation=interpretation)
    distribute(engine, w, "PR1", "M", "I", [40] * 12)
    distribute(engine, w, "PR1", "M", "O", [60] * 12)
    stay = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100)], level="C",
                     date_from=date(2026, 10, 2), date_to=date(2026, 10, 5))
    visit = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 200)], level="H",
                      date_from=date(2026, 10, 2), date_to=date(2026, 10, 2))

    run(engine)

    ip_e4 = expected_e4(DAILY * 31, Decimal(40), Decimal(100))
    op_e4 = expected_e4(DAILY * 31, Decimal(60), Decimal(200))
    assert indexes(engine) == [(12, "I", 2026, 10, ip_e4), (12, "O", 2026, 10, op_e4)] == [
        (12, "I", 2026, 10, 12_400), (12, "O", 2026, 10, 9300)]
    assert remunerated(engine, stay) == [Decimal(124)]
    assert remunerated(engine, visit) == [Decimal(186)]


def test_care_types_by_facility_level(api, engine):
    w = world(api, engine)
    configure(engine, w, "PR1", ceiling_interpretation="H")
    distribute(engine, w, "PR1", "M", "I", [40] * 12)
    distribute(engine, w, "PR1", "Q", "O", [60] * 4)
    hospital = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100)], level="H")
    health_centre = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 200)], level="C",
                              date_from=date(2026, 10, 2), date_to=date(2026, 10, 5))

    run(engine)

    assert indexes(engine) == [(12, "I", 2026, 10, 12_400)]  # out-patient is quarterly: not due in October
    assert remunerated(engine, hospital) == [Decimal(124)]
    assert claim_row(engine, health_centre) == (8, None, None)


def test_only_in_patient_distribution_pays_out_patient_at_index_one(api, engine):
    w = world(api, engine)
    configure(engine, w, "PR1", ceiling_interpretation="H")
    distribute(engine, w, "PR1", "M", "I", [40] * 12)
    hospital = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100)], level="H")
    dispensary = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 77)], level="C")

    run(engine)

    assert indexes(engine) == [(12, "I", 2026, 10, 12_400)]
    assert remunerated(engine, hospital) == [Decimal(124)]
    assert remunerated(engine, dispensary) == [Decimal(77)]


# --- exclusions, locations, products ----------------------------------------------------------------------------


def test_excluded_facility_levels_are_untouched(api, engine):
    w = world(api, engine)
    configure(engine, w, "PR1", level_1="D", level_2="C", sublevel_2="1")
    distribute(engine, w, "PR1", "M", "B", [100] * 12)
    dispensary = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 1000), L("P", 10)], level="D")
    centre = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 155)], level="C")  # no sub-level 1: paid
    hospital = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 155)], level="H")

    result = run(engine)

    assert indexes(engine) == [(12, "B", 2026, 10, 10_000)]  # 310 / 310: the dispensary's 1,000 not counted
    assert claim_row(engine, dispensary) == (8, None, None)
    assert remunerated(engine, dispensary) == [None, Decimal(10)]  # the P line as processing left it
    assert remunerated(engine, centre) == [Decimal(155)]
    assert remunerated(engine, hospital) == [Decimal(155)]
    assert result.claims == 2

    with transaction(engine, write=True) as conn:
        conn.execute(update(health_facility).where(health_facility.c.id == w.facilities["C"]).values(sub_level="1"))
    november = processed(engine, w, stamp(date(2026, 11, 9)), [L("R", 155)], level="C")
    run(engine, month=11, today=date(2026, 12, 1))
    assert claim_row(engine, november) == (8, None, None)  # (C, 1) is excluded now


def test_location_run_only_touches_its_products(api, engine):
    w = world(api, engine, products=(("PR1", None), ("REG1", "region"), ("DIS1", "district")))
    regional = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100, product="REG1")])
    national = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100, product="PR1")])
    district = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100, product="DIS1")])
    with transaction(engine, write=False) as conn:
        region_pk = conn.execute(select(location.c.pk).where(location.c.id == w.places.region)).scalar_one()

    result = run(engine, location_pk=region_pk)

    assert (result.products, result.claims) == (1, 1)
    assert claim_row(engine, regional) == (16, result.run_pk, Decimal(100))
    assert claim_row(engine, national) == (8, None, None)
    assert claim_row(engine, district) == (8, None, None)
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(batch_run.c.location_pk)).scalar_one() == region_pk

    national_run = run(engine)  # the same month nationally is another run

    assert (national_run.products, national_run.claims) == (1, 1)
    assert claim_row(engine, national) == (16, national_run.run_pk, Decimal(100))
    assert claim_row(engine, district) == (8, None, None)


def test_claim_with_lines_of_two_locations_waits_for_both_runs(api, engine):
    w = world(api, engine, products=(("PR1", None), ("REG1", "region")))
    pk = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100, product="REG1"), L("R", 50, product="PR1")])
    with transaction(engine, write=False) as conn:
        region_pk = conn.execute(select(location.c.pk).where(location.c.id == w.places.region)).scalar_one()

    regional = run(engine, location_pk=region_pk)

    assert regional.claims == 0
    assert remunerated(engine, pk) == [Decimal(100), None]
    assert claim_row(engine, pk) == (8, None, None)

    national = run(engine)

    assert national.claims == 1
    assert claim_row(engine, pk) == (16, national.run_pk, Decimal(150))


def test_second_run_for_the_same_period_is_refused(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "M", "B", [100] * 12)
    run(engine)
    late = processed(engine, w, stamp(date(2026, 10, 30)), [L("R", 100)])

    with pytest.raises(batch.BatchAlreadyRun, match="2026-10 has already run nationally"):
        run(engine)

    with transaction(engine, write=False) as conn:
        assert conn.execute(select(func.count()).select_from(batch_run)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(rel_index)).scalar() == 1
    assert claim_row(engine, late) == (8, None, None)
    assert remunerated(engine, late) == [None]


def test_unfinished_month_is_refused(api, engine):
    w = world(api, engine)
    pk = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 100)])

    with pytest.raises(batch.BatchPeriodNotOver):
        run(engine, today=date(2026, 10, 31))

    with transaction(engine, write=False) as conn:
        assert conn.execute(select(func.count()).select_from(batch_run)).scalar() == 0
    assert claim_row(engine, pk) == (8, None, None)


# --- relative distribution ------------------------------------------------------------------------------------


def test_set_distribution_stores_shares_and_versions_the_product(api, engine):
    w = world(api, engine)
    distribute(engine, w, "PR1", "Q", "I", ["10", "20.5", 30, 40])
    distribute(engine, w, "PR1", "Y", "I", [75])  # replaces the quarterly shares

    with transaction(engine, write=False) as conn:
        rows = conn.execute(select(rel_distr.c.dist_type, rel_distr.c.care_type, rel_distr.c.period,
                                   rel_distr.c.percent)).all()
        assert [tuple(r) for r in rows] == [(1, "I", 1, Decimal(75))]
        assert conn.execute(select(product.c.period_rel_prices_ip, product.c.period_rel_prices)
                            .where(product.c.id == w.products["PR1"])).one() == ("Y", None)
    body = api.get(f"InsurancePlan/{w.products['PR1']}").json()
    assert body["meta"]["versionId"] == "3"
    capitation = [e for e in body["extension"] if e["url"].endswith("insurance-plan-capitation")]
    assert {"url": "periodRelPricesIp", "valueCode": "Y"} in capitation[0]["extension"]


@pytest.mark.parametrize(("dist_type", "care", "percents", "message"), [
    ("M", "B", [10] * 11, "12 percentages, not 11"),
    ("Q", "B", [10, 10, 10, 101], "percentage 4 must be 0 to 100"),
    ("Y", "B", ["-1"], "percentage 1 must be 0 to 100"),
    ("Y", "B", ["1.005"], "at most two decimals"),
    ("W", "B", [10], "must be M, Q or Y"),
    ("Y", "H", [10], "must be B, I or O"),
])
def test_set_distribution_validates(api, engine, dist_type, care, percents, message):
    w = world(api, engine)
    with pytest.raises(batch.DistributionError, match=message):
        distribute(engine, w, "PR1", dist_type, care, percents)
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(func.count()).select_from(rel_distr)).scalar() == 0


# --- the command --------------------------------------------------------------------------------------------------


def test_cli_batch_run(api, engine, command_env, capsys):
    w = world(api, engine)
    pk = processed(engine, w, stamp(date(2026, 10, 9)), [L("R", 620)])

    percents = ["50"] * 12
    assert cli.main(["claims", "distribution", "--product", "PR1", "--type", "M", "--care", "B",
                     "--percent", *percents]) == 0
    assert "product PR1: M distribution for care type B set" in capsys.readouterr().out
    assert cli.main(["claims", "batch-run", "--period", "2026-10"]) == 0
    out = capsys.readouterr().out
    assert "batch run 2026-10 (national)" in out and "1 claims valuated, remunerated 155.00" in out
    assert claim_row(engine, pk).status == 16 and remunerated(engine, pk) == [Decimal(155)]
    with transaction(engine, write=False) as conn:
        claim_id = conn.execute(select(claim.c.id).where(claim.c.pk == pk)).scalar_one()
    response = api.get(f"ClaimResponse/{claim_id}").json()  # the stored version follows the valuation
    assert response["outcome"] == "complete", response
    assert response["meta"]["versionId"] == "2"  # its own version: the claim row's version_id is the Claim's
    found = api.get(f"ClaimResponse?_id={claim_id}")
    assert [e["resource"]["outcome"] for e in found.json()["entry"]] == ["complete"]
    bills = api.get("Invoice?type=claim-batch").json()["entry"]  # the facility's bill, made by the same command
    assert [(b["resource"]["status"], b["resource"]["totalGross"]["value"], b["resource"]["recipient"]["reference"]
             .split("/")[0]) for b in bills] == [("issued", 155, "Organization")]

    assert cli.main(["claims", "batch-run", "--period", "2026-10"]) == 1
    assert "error: the batch for 2026-10 has already run nationally" in capsys.readouterr().err
    assert cli.main(["claims", "batch-run", "--period", "2026-10", "--location", "R1"]) == 0
    assert "batch run 2026-10 (R1): run " in (out := capsys.readouterr().out) and ", 0 products" in out


@pytest.mark.parametrize(("args", "message"), [
    (["batch-run", "--period", "2026-13"], "--period must be a month as YYYY-MM (e.g. 2026-10), not '2026-13'"),
    (["batch-run", "--period", "October"], "not 'October'"),
    (["batch-run", "--period", "2026-10", "--location", "R1D1W1"], "'R1D1W1' is not a region or a district"),
    (["batch-run", "--period", "2026-10", "--location", "NOPE"], "no location with code 'NOPE'"),
    (["batch-run", "--period", "2999-01"], "2999-01 is not over yet"),
    (["distribution", "--product", "NOPE", "--type", "Y", "--care", "B", "--percent", "5"],
     "no product with code 'NOPE'"),
    (["distribution", "--product", "PR1", "--type", "Y", "--care", "B", "--percent", "five"],
     "--percent takes numbers"),
    (["distribution", "--product", "PR1", "--type", "Q", "--care", "B", "--percent", "5"],
     "a Q distribution has 4 percentages, not 1"),
])
def test_cli_refuses_bad_input(api, engine, command_env, capsys, args, message):
    world(api, engine)
    assert cli.main(["claims", *args]) == 1
    assert message in capsys.readouterr().err
    with transaction(engine, write=False) as conn:
        assert conn.execute(select(func.count()).select_from(batch_run)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(rel_distr)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(insuree)).scalar() == 1
